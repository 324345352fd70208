"""Privacy accounting and noise calibration through Opacus's accountants.

A client that ran ``steps`` DP-SGD steps with Poisson rate ``q`` and noise multiplier ``σ``
has spent ``ε(σ, q, steps, δ)`` as computed by the chosen Opacus accountant (``rdp``: Mironov
2017 / Mironov et al. 2019; ``prv``: Gopi et al. 2021; ``gdp``: Dong et al. 2019).
"""

from __future__ import annotations

import math
import warnings

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from fedlora_cli.errors import InputError

ACCOUNTANTS = ("rdp", "prv", "gdp")
CALIBRATION_TOLERANCE = 0.005


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon after ``steps`` Poisson-sampled Gaussian steps (0 for no steps, inf for no noise)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """The smallest noise multiplier (within 0.5% in epsilon) whose epsilon stays at or below the target."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=CALIBRATION_TOLERANCE * target_epsilon,
                )
            )
    except ValueError as exc:
        raise InputError(
            f"privacy.target_epsilon={target_epsilon}: cannot be reached with delta={delta}, "
            f"sample rate {sample_rate:.4g} and {steps} steps ({exc}); raise the target or delta"
        ) from None
