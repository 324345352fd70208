"""FedSVD (Lee et al., "FedSVD: Adaptive Orthogonalization for Private Federated Learning
with LoRA", 2025; code: seanie12/fed-svd).

Clients train only B against the current global A. The server averages ``B' = Σ p_k B_k`` and,
every ``svd_period`` rounds, re-factorizes the product: ``U Σ Vᵀ = svd(B'·A)``,
``A ← Vᵀ[:r]``, ``B ← U[:, :r]·Σ[:r]``. Since rank(B'A) ≤ r this is exact (``B_new A_new = B'A``)
and leaves A with orthonormal rows, which bounds B's gradient norm under clipping. A module whose
B' is exactly zero (no factor step yet: ``lr_schedule: probe_then_cosine`` freezes them at first)
keeps its A: the SVD of the zero product would replace A by an arbitrary basis (the first r
coordinate axes, in practice), and ``B' = 0`` gives ``B'·A = 0`` either way.

The published code takes a dense SVD of the out×in product. :func:`refactorize` gets the same
factors from the thin ones in O((out+in)·r²): ``B' = Q R`` (QR, Q out×r), ``svd(R·A) = U' Σ Vᵀ``
(r×in), so ``A ← Vᵀ``, ``B ← Q·U'·Σ``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fedlora_cli.methods.base import Method, State
from fedlora_cli.methods.registry import MethodOptions, register


class FedSVDOptions(MethodOptions):
    name: Literal["fedsvd"] = "fedsvd"
    svd_period: int = Field(1, ge=0, description="re-factorize every k rounds (0: never)")
    svd_mode: Literal["qr", "dense"] = Field("qr", description="exact QR path or dense SVD of B@A")


def refactorize(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B_new, A_new) with ``B_new @ A_new == b @ a`` and orthonormal rows in A_new (QR path)."""
    q, r = torch.linalg.qr(b.double())
    u, s, vh = torch.linalg.svd(r @ a.double(), full_matrices=False)
    return (q @ (u * s)).to(b.dtype), vh.to(a.dtype)


def refactorize_dense(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The published code's path: a full SVD of the dense out×in product ``b @ a``."""
    rank = a.shape[0]
    u, s, vh = torch.linalg.svd(b.double() @ a.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]).to(b.dtype), vh[:rank].to(a.dtype)


@register(FedSVDOptions)
class FedSVD(Method):
    trains_a = False

    def refactorizes_in(self, round_index: int) -> bool:
        period = self.cfg.svd_period
        return period > 0 and (round_index + 1) % period == 0

    def broadcast_keys(self, state: State) -> list[str]:
        """B (and the head) always; A too once re-factorization can change it."""
        keys = super().broadcast_keys(state)
        if self.cfg.svd_period > 0:
            keys += [module.a_key for module in self.modules]
        return keys

    def carry_optimizer_state(self, old_state, new_state, round_index) -> None:
        """After a re-factorization B's coordinates are A_new's rows: server momentum ``m`` (a
        direction ``m·A_old`` in weight space) becomes ``m·A_old·A_newᵀ``, exact whenever B' has
        rank r (then A_old and A_new span the same rows)."""
        if self.refactorizes_in(round_index):
            for module in self.modules:
                old_a, new_a = old_state[module.a_key].double(), new_state[module.a_key].double()
                self.server_optimizer.change_basis(module.b_key, old_a @ new_a.T)

    def server_update(self, global_state, mean, uploads, weights, round_index) -> State:
        state = {**global_state, **mean}
        if self.refactorizes_in(round_index):
            factorize = refactorize if self.cfg.svd_mode == "qr" else refactorize_dense
            for module in self.modules:
                if state[module.b_key].any():
                    state[module.b_key], state[module.a_key] = factorize(state[module.b_key], state[module.a_key])
        return state
