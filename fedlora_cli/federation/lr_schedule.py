"""The LoRA factors' learning rate over the rounds (``federation.lr_schedule``).

Round ``t`` of ``T`` (0-based) trains the LoRA factors at ``lr · s(t)``:

- ``constant``: ``s(t) = 1``;
- ``cosine``: ``s(t) = ½ (1 + cos(π t / T))`` (Loshchilov & Hutter 2017, SGDR, without restarts);
- ``linear``: ``s(t) = 1 − t / T``.

The factor is constant within a round (all of a client's local steps) and the same for every
client; the classifier head keeps ``head_lr``. Why only the factors: under DP-SGD each LoRA step
adds noise of the same size however little signal is left, and with a constant step that noise
adds up over the rounds as a random walk (docs/learning.md, rounds 13–14).
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear")


def lora_lr_scale(schedule: str, round_index: int, rounds: int) -> float:
    """``s(t)`` for round ``round_index`` (0-based) of ``rounds``; ``s(0) = 1``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if rounds < 1 or not 0 <= round_index < rounds:
        raise ValueError(f"round {round_index} is outside 0..{rounds - 1}")
    progress = round_index / rounds
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0
