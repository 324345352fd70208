"""Server optimizers on the aggregated update (Hsu et al. 2019, "Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification" (FedAvgM); Reddi et al.,
ICLR 2021, "Adaptive Federated Optimization" (FedAdagrad, FedAdam, FedYogi)).

Each round the method's weighted mean ``x̄`` of the uploaded tensors gives the pseudo-gradient
``Δ = x̄ − x`` (``x``: the global tensor the clients started from), and the optimizer replaces
``x̄`` by ``x + η·u`` before the method's own server step:

- ``sgd`` (FedAvg with a server learning rate, FedOpt's SERVEROPT = SGD): ``u = Δ``
- ``momentum`` (FedAvgM): ``m ← β·m + Δ``, ``u = m``
- ``adagrad``:            ``m ← β1·m + (1−β1)·Δ``, ``v ← v + Δ²``, ``u = m / (√v + τ)``
- ``adam``:               ``m`` as above, ``v ← β2·v + (1−β2)·Δ²``, ``u = m / (√v + τ)``
- ``yogi``:               ``m`` as above, ``v ← v − (1−β2)·Δ²·sign(v − Δ²)``, ``u = m / (√v + τ)``

(Reddi et al.'s Algorithm 2, no bias correction.) With ``server_lr`` 1, ``sgd`` (and
``momentum`` with β 0) is plain averaging. The optimizer acts on what the method averages (A and B for
fedavg, B for ffa and fedsvd before the re-factorization, R for fedsb, the head when trained),
so every exact method stays exact: the served adapter is the method's equation applied to
``x + η·u`` instead of ``x̄``. Under DP the uploads (sample level) or the mean (client level)
are already noised, so this is post-processing: it costs no privacy.
"""

from __future__ import annotations

import torch

State = dict[str, torch.Tensor]

#: Optimizers whose state is per coordinate (a second moment): it has no meaning after a change of basis.
PER_COORDINATE = ("adagrad", "adam", "yogi")


class ServerOptimizer:
    """Keeps ``m`` (and ``v``) per averaged tensor, in float64; :meth:`step` returns ``x + η·u``."""

    def __init__(self, name: str, lr: float, momentum: float, beta2: float, tau: float):
        self.name = name
        self.lr = lr
        self.beta1 = momentum
        self.beta2 = beta2
        self.tau = tau
        self.m: State = {}
        self.v: State = {}

    @classmethod
    def from_config(cls, fed) -> "ServerOptimizer | None":
        if fed.server_optimizer == "none":
            return None
        return cls(fed.server_optimizer, fed.server_lr, fed.server_momentum, fed.server_beta2, fed.server_tau)

    def step(self, global_state: State, mean: State) -> State:
        """``x + η·u`` for every tensor of ``mean`` (its pseudo-gradient is ``mean − global``)."""
        out = {}
        for key, averaged in mean.items():
            x = global_state[key].double()
            delta = averaged.double() - x
            if self.name == "sgd":  # stateless
                out[key] = (x + self.lr * delta).to(averaged.dtype)
                continue
            m = self.m.get(key, torch.zeros_like(delta))
            if self.name == "momentum":
                m = self.beta1 * m + delta
                update = m
            else:
                m = self.beta1 * m + (1 - self.beta1) * delta
                v = self.v.get(key, torch.zeros_like(delta))
                square = delta * delta
                if self.name == "adagrad":
                    v = v + square
                elif self.name == "adam":
                    v = self.beta2 * v + (1 - self.beta2) * square
                else:  # yogi
                    v = v - (1 - self.beta2) * square * torch.sign(v - square)
                self.v[key] = v
                update = m / (v.sqrt() + self.tau)
            self.m[key] = m
            out[key] = (x + self.lr * update).to(averaged.dtype)
        return out

    def change_basis(self, key: str, right: torch.Tensor) -> None:
        """Express the momentum of ``key`` in new coordinates: ``m ← m·right`` (fedsvd's
        re-factorization rotates B's coordinates; only momentum-style state survives that)."""
        if key in self.m:
            self.m[key] = self.m[key] @ right.double()

    def state(self, prefix: str) -> State:
        """The optimizer's tensors for a checkpoint, under ``prefix``."""
        return {**{f"{prefix}m::{k}": t for k, t in self.m.items()}, **{f"{prefix}v::{k}": t for k, t in self.v.items()}}

    def load_state(self, tensors: State, prefix: str) -> None:
        for name, tensor in tensors.items():
            kind, _, key = name.removeprefix(prefix).partition("::")
            (self.m if kind == "m" else self.v)[key] = tensor.double()
