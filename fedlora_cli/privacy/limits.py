"""Limits of privacy settings: an epsilon too large to be a guarantee, a step count too large for
the prv accountant. This module imports nothing heavy, so recipe checks and the CLI can ask
before torch and Opacus load."""

from __future__ import annotations

# prv's grid grows with the steps: one epsilon took 4 s at 10^5 steps (calibrating 5 s), 25 s at 4*10^5
# and over a minute at 10^6 (2 CPU cores under load). rdp is fast at any count.
PRV_MAX_STEPS = 100_000
MEANINGFUL_EPSILON = 100  # beyond it the bound e^epsilon on an attacker's odds says nothing


def weak_epsilon_warning(value: float, name: str) -> str | None:
    """A warning when an epsilon (``name``: how the caller spells it) is above ``MEANINGFUL_EPSILON``."""
    if value <= MEANINGFUL_EPSILON:
        return None
    return (
        f"{name}={value:g} is no meaningful privacy guarantee (it bounds an attacker's odds by e^{value:g}); "
        f"choose an epsilon of at most {MEANINGFUL_EPSILON}, typically 1 to 10"
    )
_CALIBRATIONS: dict[str, float] = {}  # in-process memo of calibrate_noise
