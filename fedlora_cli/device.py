"""Where a run's tensors live: ``federation.device`` resolved for this machine.

    auto    → cuda:0 when torch sees a CUDA GPU, else cpu (never mps: it is used only when asked)
    cpu     → cpu
    cuda    → cuda:0
    cuda:N  → GPU N, when 0 ≤ N < torch.cuda.device_count()
    mps     → Apple's Metal GPU, when torch.backends.mps.is_available()

A device this machine does not have is an :class:`~fedlora_cli.errors.InputError` naming
``federation.device``, found by recipe validation before anything is loaded or written.

The model, its batches, the LoRA state, the server's aggregation and evaluation run on the
device; checkpoints hold CPU tensors and load onto any device. Randomness keeps one rule on
every device: client sampling and Poisson batches are drawn on the CPU (the same seed picks the
same examples on a laptop and on a GPU), DP noise is drawn where the gradients are, from a
generator on that device seeded the same way (:func:`seeded_generator`). On the CPU a resumed run
is bit-identical to an uninterrupted one; on a GPU the same examples are sampled, but CUDA's
noise stream differs from the CPU's and some CUDA kernels are non-deterministic unless
``torch.use_deterministic_algorithms(True)`` (see docs/devices.md).

This module imports torch only for settings that need it, so recipe errors stay fast.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fedlora_cli.errors import InputError

if TYPE_CHECKING:
    import torch

DEVICE_SETTING = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps"
KEY = "federation.device"


def check_device_setting(setting: str) -> str:
    """``setting`` when it is one of the device forms (ValueError otherwise: the recipe schema)."""
    if not DEVICE_SETTING.fullmatch(setting):
        raise ValueError(f"unknown device '{setting}'; choose one of: {DEVICE_CHOICES}")
    return setting


def device_problem(setting: str) -> str | None:
    """Why ``federation.device: setting`` cannot run on this machine (None when it can)."""
    if setting in ("auto", "cpu"):
        return None
    import torch

    if setting == "mps":
        if torch.backends.mps.is_available():
            return None
        return f"{KEY}=mps: this machine has no usable MPS (Apple Metal) device; set {KEY}=cpu (or auto)"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(setting.partition(":")[2] or 0)
    if count == 0:
        return (
            f"{KEY}={setting}: torch sees no CUDA GPU on this machine (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); set {KEY}=cpu (or auto), or run on a GPU machine "
            "with a CUDA build of torch"
        )
    if index >= count:
        return f"{KEY}={setting}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; set {KEY}=cuda:0 (or auto)"
    return None


def device_problems(setting: str, secure_mode: bool = False) -> list[str]:
    """Every reason a run cannot use ``federation.device: setting`` here (for recipe validation).

    Secure mode draws its noise from torchcsprng's ``/dev/urandom`` generator, a CPU generator,
    so it runs on the CPU only.
    """
    problem = device_problem(setting)
    if problem:
        return [problem]
    if secure_mode and resolve_device(setting).type != "cpu":
        return [
            f"privacy.secure_mode=true draws noise from a CPU generator (torchcsprng) and cannot run on "
            f"{KEY}={setting}; set {KEY}=cpu, or privacy.secure_mode=false"
        ]
    return []


def resolve_device(setting: str) -> "torch.device":
    """The ``torch.device`` for a ``federation.device`` setting; InputError when it is unavailable."""
    import torch

    problem = device_problem(check_device_setting(setting))
    if problem:
        raise InputError(problem)
    if setting == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda:0" if setting == "cuda" else setting)


def model_device(model: "torch.nn.Module") -> "torch.device":
    """The device of the model's parameters (one device per model)."""
    return next(model.parameters()).device


def seeded_generator(seed: int, device: "torch.device | str" = "cpu") -> "torch.Generator":
    """A ``torch.Generator`` on ``device`` seeded with ``seed``: the same seed gives the same
    stream on every run on that device (CPU and CUDA streams differ from each other)."""
    import torch

    return torch.Generator(device=device).manual_seed(seed)
