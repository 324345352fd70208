"""Which precision the forward pass runs in: ``federation.precision`` resolved for the run's device.

``auto`` picks ``bfloat16`` where it is native and ``float32`` elsewhere:

    cpu   → bfloat16 when the CPU has native bfloat16 matrix instructions (x86 AVX512-BF16 or
            AMX-BF16, Arm BF16; without them bfloat16 is emulated and slower than float32)
    cuda  → bfloat16 when the GPU supports it (``torch.cuda.is_bf16_supported``: Ampere and newer)
    mps   → float32

Only the forward pass runs under autocast on the device (:func:`autocast`); the weights stay
float32, and per-sample gradients, clipping, noise and accounting stay float32
(:mod:`fedlora_cli.federation.client`).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = re.compile(r"\b(avx512_bf16|amx_bf16|bf16)\b")


@cache
def native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when ``cpuinfo`` lists a bfloat16 instruction set (False when it cannot be read)."""
    try:
        return NATIVE_BF16_FLAGS.search(cpuinfo.read_text(encoding="utf-8", errors="replace")) is not None
    except OSError:
        return False


def resolve_precision(setting: str, device: torch.device | str = "cpu") -> str:
    """``float32`` or ``bfloat16`` for a ``federation.precision`` setting on ``device`` (``auto`` decided here)."""
    if setting != "auto":
        return setting
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu" and native_bfloat16():
        return "bfloat16"
    return "float32"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of a forward pass on ``device``: bfloat16 when ``precision`` says so."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
