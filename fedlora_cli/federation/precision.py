"""Which precision the forward pass runs in: ``federation.precision`` resolved for this CPU.

``auto`` picks ``bfloat16`` where the CPU has native bfloat16 matrix instructions (x86
AVX512-BF16 or AMX-BF16, Arm BF16) and ``float32`` elsewhere: without them bfloat16 is
emulated and slower than float32. Only the forward pass runs under autocast; per-sample
gradients, clipping, noise and accounting stay float32 (:mod:`fedlora_cli.federation.client`).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

NATIVE_BF16_FLAGS = re.compile(r"\b(avx512_bf16|amx_bf16|bf16)\b")


@cache
def native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when ``cpuinfo`` lists a bfloat16 instruction set (False when it cannot be read)."""
    try:
        return NATIVE_BF16_FLAGS.search(cpuinfo.read_text(encoding="utf-8", errors="replace")) is not None
    except OSError:
        return False


def resolve_precision(setting: str) -> str:
    """``float32`` or ``bfloat16`` for a ``federation.precision`` setting (``auto`` decided here)."""
    if setting == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return setting
