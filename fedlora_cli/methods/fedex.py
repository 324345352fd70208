"""FedEx-LoRA (Singhal et al., "FedEx-LoRA: Exact Aggregation for Federated and Efficient
Fine-Tuning of Foundation Models", arXiv 2410.09432).

Clients train A and B. The server averages both factors, ``Ā = Σ p_k A_k``, ``B̄ = Σ p_k B_k``,
and folds what that average misses into the frozen base weight (out×in):

    W0 ← W0 + s·(Σ p_k B_k A_k − B̄ Ā)

so ``W0' + s·B̄Ā = Σ p_k (W0 + s·B_k A_k)``: the effective weight is the exact weighted mean of
the clients' effective weights. (The published code adds this residual transposed, which goes
unnoticed on square q/v matrices; here it is ``B @ A``, out×in, checked on a non-square layer,
and written transposed only into layers that store W0 in×out: GPT-2's ``Conv1D``.)

Each client sampled after the first round also receives the dense residual, out×in per module
(a client that skipped rounds receives the sum of the residuals it missed: the same size).
The residual needs each client's own ``B_k A_k``, not only the mean, so client-level DP (which
releases only a noised mean) refuses this method (``uses_raw_uploads``).
"""

from __future__ import annotations

from typing import Literal

import torch

from fedlora_cli.methods.base import Method, State, add_to_base_weight, tensor_bytes
from fedlora_cli.methods.registry import MethodOptions, register


class FedExOptions(MethodOptions):
    name: Literal["fedex"] = "fedex"


def fedex_residual(b_factors: list[torch.Tensor], a_factors: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``Σ p_k B_k A_k − (Σ p_k B_k)(Σ p_k A_k)`` in float64 (out×in; without the scaling s)."""
    w = [float(p) for p in weights]
    exact = sum(p * (b.double() @ a.double()) for p, b, a in zip(w, b_factors, a_factors))
    b_mean = sum(p * b.double() for p, b in zip(w, b_factors))
    a_mean = sum(p * a.double() for p, a in zip(w, a_factors))
    return exact - b_mean @ a_mean


@register(FedExOptions)
class FedEx(Method):
    modifies_base = True
    uses_raw_uploads = True

    def download_bytes(self, state: State, round_index: int) -> int:
        """The averaged adapter, plus (after round 0) the residual that changed every base weight."""
        adapter = super().download_bytes(state, round_index)
        if round_index == 0:
            return adapter
        return adapter + sum(tensor_bytes([module.base_weight]) for module in self.modules)

    def server_update(self, global_state, mean, uploads, weights, round_index) -> State:
        for module in self.modules:
            residual = fedex_residual([u[module.b_key] for u in uploads], [u[module.a_key] for u in uploads], weights)
            add_to_base_weight(module, residual)
        return {**global_state, **mean}
