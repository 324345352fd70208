"""The LoRA factors' learning rate over the rounds (``federation.lr_schedule``).

Round ``t`` of ``T`` (0-based) trains the LoRA factors at ``lr · s(t)``:

- ``constant``: ``s(t) = 1``;
- ``cosine``: ``s(t) = ½ (1 + cos(π t / T))`` (Loshchilov & Hutter 2017, SGDR, without restarts);
- ``linear``: ``s(t) = 1 − t / T``;
- ``probe_then_cosine``: ``s(t) = 0`` for the first ``h = ⌊T/2⌋`` rounds, then
  ``s(t) = ½ (1 + cos(π (t − h) / (T − h)))``: linear probing, then fine-tuning (LP-FT; Kumar et al.
  2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution"). The
  factors first see gradients through a trained head instead of a random one, and take half the
  noisy steps.

The factor is constant within a round (all of a client's local steps) and the same for every
client; the classifier head keeps ``head_lr``. Why only the factors: under DP-SGD each LoRA step
adds noise of the same size however little signal is left, and with a constant step that noise
adds up over the rounds as a random walk (docs/learning.md, rounds 13–14).
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear", "probe_then_cosine")


def lora_lr_scale(schedule: str, round_index: int, rounds: int) -> float:
    """``s(t)`` for round ``round_index`` (0-based) of ``rounds``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if rounds < 1 or not 0 <= round_index < rounds:
        raise ValueError(f"round {round_index} is outside 0..{rounds - 1}")
    if schedule == "probe_then_cosine":
        frozen = rounds // 2
        if round_index < frozen:
            return 0.0
        return lora_lr_scale("cosine", round_index - frozen, rounds - frozen)
    progress = round_index / rounds
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0
