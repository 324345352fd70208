"""FLoRA (Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous
Low-Rank Adaptations", NeurIPS 2024): aggregation by stacking.

Clients train A and B. The server stacks the clients' factors, ``[p_1 B_1 … p_K B_K]`` (out×Kr)
and ``[A_1; …; A_K]`` (Kr×in), whose product is exactly ``Σ p_k B_k A_k``, folds it into the frozen
base weight (transposed where W0 is stored in×out, GPT-2's ``Conv1D``) and starts a fresh adapter:

    W0 ← W0 + s·Σ p_k B_k A_k,   A ← Kaiming-uniform (peft's init),   B ← 0

so the effective weight after the round is the exact weighted mean ``Σ p_k (W0 + s·B_k A_k)``.
The new A is drawn from a generator seeded by (run seed, round, module), so clients can draw
it themselves and a resumed run continues bit-identically. Each client sampled after the first
round receives the stacked factors of the previous round's clients (``clients_per_round·r·(out+in)``
per module) instead of the adapter, which is known (that A, B = 0); a client that skipped
rounds would also need the stacks it missed, so with ``clients_per_round < clients`` this
download count is a lower bound. The stack needs each
client's own factors, so client-level DP (which releases only a noised mean) refuses this
method (``uses_raw_uploads``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from fedlora_cli.seeding import derive_seed
from fedlora_cli.methods.base import Method, State, add_to_base_weight, tensor_bytes
from fedlora_cli.methods.registry import MethodOptions, register


class FLoRAOptions(MethodOptions):
    name: Literal["flora"] = "flora"


def stacked_product(b_factors: list[torch.Tensor], a_factors: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``[p_1 B_1 … p_K B_K] @ [A_1; …; A_K] = Σ p_k B_k A_k`` in float64 (out×in)."""
    b_stack = torch.cat([float(p) * b.double() for p, b in zip(weights, b_factors)], dim=1)
    a_stack = torch.cat([a.double() for a in a_factors], dim=0)
    return b_stack @ a_stack


def fresh_lora_a(shape: torch.Size, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A Kaiming-uniform A exactly as peft initializes ``lora_A`` (``a=√5``), from ``seed``."""
    a = torch.empty(shape, dtype=dtype)
    torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))
    return a


@register(FLoRAOptions)
class FLoRA(Method):
    modifies_base = True
    uses_raw_uploads = True

    def broadcast_keys(self, state: State) -> list[str]:
        """Only the head: clients draw the fresh A from the shared seed, and B is zero."""
        return [key for key in super().broadcast_keys(state) if ".lora_" not in key]

    def download_bytes(self, state: State, round_index: int) -> int:
        """The head, plus (after round 0) the previous round's stacked factors, one pair per client."""
        head = super().download_bytes(state, round_index)
        if round_index == 0:
            return head
        factors = tensor_bytes(state[key] for module in self.modules for key in (module.a_key, module.b_key))
        return head + self.clients_per_round * factors

    def server_update(self, global_state, mean, uploads, weights, round_index) -> State:
        state = {**global_state, **mean}
        for module in self.modules:
            update = stacked_product([u[module.b_key] for u in uploads], [u[module.a_key] for u in uploads], weights)
            add_to_base_weight(module, update)
            a, b = state[module.a_key], state[module.b_key]
            state[module.a_key] = fresh_lora_a(a.shape, a.dtype, derive_seed(self.seed, round_index, "flora", module.name))
            state[module.b_key] = torch.zeros_like(b)
        return state
