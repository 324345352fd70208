"""Fed-SB (Singhal et al., "Fed-SB: A Silver Bullet for Extreme Communication Efficiency and
Performance in (Private) Federated LoRA Fine-Tuning", arXiv 2502.15436), built on LoRA-SB
(Ponkshe et al., "Initialization using Update Approximation is a Silver Bullet for Extreme
Efficient Low-Rank Fine-Tuning", arXiv 2411.19557).

Each adapted layer computes ``W0 + s·B·R·A`` with B (out×r) and A (r×in) frozen and only the
r×r matrix R trained. The server averages it, ``R = Σ p_k R_k``; exact, because
``Σ p_k B R_k A = B (Σ p_k R_k) A``. Clients exchange only R: r² numbers per module.

peft has no R, so :meth:`FedSB.setup` puts a plain ``nn.Linear(r, r, bias=False)`` in front of B
(``lora_B[default] = Sequential(R, B)``), which Opacus supports for per-sample gradients.
Initialization is data-independent: B with orthonormal columns and A with orthonormal rows
drawn from generators seeded by (run seed, module) (so clients draw them, nothing is sent),
and R = 0, so training starts at W0. The papers' data-driven initialization (an SVD of a
gradient estimated on client data) reads raw data outside DP-SGD, so fedlora does not offer
it. For saving, :meth:`FedSB.exported` turns the adapter into standard LoRA with ``B ← B·R``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from fedlora_cli.errors import InputError
from fedlora_cli.seeding import derive_seed
from fedlora_cli.methods.base import Method
from fedlora_cli.methods.registry import MethodOptions, register
from fedlora_cli.peft_names import ADAPTER_NAME, is_head_parameter

R_SUFFIX = f".lora_B.{ADAPTER_NAME}.0.weight"


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A rows×cols matrix with orthonormal columns (rows ≥ cols), or rows (rows < cols), from ``seed``."""
    gaussian = torch.randn(max(rows, cols), min(rows, cols), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r))
    return q if rows >= cols else q.T


class FedSBOptions(MethodOptions):
    name: Literal["fedsb"] = "fedsb"
    fedsb_init: Literal["random"] = Field("random", description="B, A orthonormal from the seed, R = 0")

    @field_validator("fedsb_init", mode="before")
    @classmethod
    def _no_data_driven_init(cls, value):
        if value == "gradient_svd":
            raise ValueError(
                "gradient_svd (LoRA-SB's SVD of a gradient on client data) reads raw client data outside "
                "DP-SGD and would spend privacy no accountant counts, so fedlora does not offer it; "
                "use method.fedsb_init=random"
            )
        return value


@register(FedSBOptions)
class FedSB(Method):

    def setup(self) -> None:
        """``lora_B[default] ← Sequential(R, B)``; B, A orthonormal (seeded), R = 0."""
        for module in self.modules:
            a_layer, b_layer = module.layer.lora_A[ADAPTER_NAME], module.layer.lora_B[ADAPTER_NAME]
            rank, fan_in = a_layer.weight.shape
            fan_out = b_layer.weight.shape[0]
            if rank > min(fan_in, fan_out):
                raise InputError(
                    f"model.rank: fedsb needs rank ≤ min(out, in) of every target, but {module.name} is "
                    f"{fan_out}×{fan_in}; lower model.rank to at most {min(fan_in, fan_out)}"
                )
            dtype = a_layer.weight.dtype
            with torch.no_grad():
                a_layer.weight.copy_(orthonormal(rank, fan_in, derive_seed(self.seed, "fedsb-A", module.name)).to(dtype))
                b_layer.weight.copy_(orthonormal(fan_out, rank, derive_seed(self.seed, "fedsb-B", module.name)).to(dtype))
            r_layer = nn.utils.skip_init(nn.Linear, rank, rank, bias=False, dtype=dtype)
            nn.init.zeros_(r_layer.weight)
            module.layer.lora_B[ADAPTER_NAME] = nn.Sequential(r_layer, b_layer)

    def is_trainable(self, name: str) -> bool:
        """Only R (and the head when ``model.train_head``); the server's default mean gives ``R = Σ p_k R_k``."""
        if is_head_parameter(name):
            return self.train_head
        return name.endswith(R_SUFFIX)

    @contextlib.contextmanager
    def exported(self) -> Iterator[None]:
        """Plain ``lora_B[default]`` layers holding ``B·R`` while open, then R and B restored."""
        saved = []
        with torch.no_grad():
            for module in self.modules:
                sequential = module.layer.lora_B[ADAPTER_NAME]
                r_layer, b_layer = sequential[0], sequential[1]
                saved.append((module, sequential, b_layer.weight.detach().clone()))
                b_layer.weight.copy_(b_layer.weight @ r_layer.weight)
                module.layer.lora_B[ADAPTER_NAME] = b_layer
        try:
            yield
        finally:
            with torch.no_grad():
                for module, sequential, b_weight in saved:
                    sequential[1].weight.copy_(b_weight)
                    module.layer.lora_B[ADAPTER_NAME] = sequential
