"""Name -> accountant: how epsilon of the Poisson-subsampled Gaussian mechanism is computed.

An accountant is one module in this package: a subclass of :class:`Accountant` registered with
``@register``. It names the Opacus accountant class it uses (Opacus is imported only when an
epsilon is computed, so the recipe schema can list the names quickly), says whether noise may be
calibrated with it, and gives its epsilon floor (the limit σ → ∞).
"""

from __future__ import annotations

import warnings
from typing import ClassVar

from fedlora_cli.registry import did_you_mean


class Accountant:
    """``ε(σ, q, steps, δ)`` of ``steps`` Poisson-sampled Gaussian steps, through one Opacus accountant."""

    name: ClassVar[str]
    note: ClassVar[str]  # one line: what the bound is, with its paper
    calibrates: ClassVar[bool] = True  # False: reports epsilon but never calibrates noise (an approximation)
    max_steps: ClassVar[int | None] = None  # beyond this many steps it takes minutes: refused

    @staticmethod
    def opacus_class() -> type:
        """The Opacus accountant class (imported here: Opacus loads only when it computes)."""
        raise NotImplementedError

    @classmethod
    def epsilon(cls, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        """Epsilon of a fresh Opacus accountant whose history is ``steps`` steps at (σ, q), loaded
        through Opacus's public ``load_state_dict`` (what ``steps`` calls of ``step`` would build)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gdp warns on every use (the CLI states its caveat once), rdp at extreme orders
            accountant = cls.opacus_class()()
            accountant.load_state_dict({"history": [(noise_multiplier, sample_rate, steps)], "mechanism": accountant.mechanism()})
            return float(accountant.get_epsilon(delta=delta))

    @classmethod
    def floor(cls, delta: float) -> float:
        """The epsilon no amount of noise gets below (default 0)."""
        return 0.0


ACCOUNTANTS: dict[str, type[Accountant]] = {}  # in listing order: see register
DEFAULT_ACCOUNTANT = "rdp"  # fast at any step count, an upper bound


def register(cls: type[Accountant]) -> type[Accountant]:
    """Add an accountant; the listing order (``--accountant all``, recipe help) puts accountants
    that calibrate first, fast ones before those with ``max_steps``, then by name."""
    if cls.name in ACCOUNTANTS:
        raise ValueError(f"accountant '{cls.name}' is registered twice")
    ordered = sorted([*ACCOUNTANTS.values(), cls], key=lambda c: (not c.calibrates, c.max_steps is not None, c.name))
    ACCOUNTANTS.clear()
    ACCOUNTANTS.update((c.name, c) for c in ordered)
    return cls


def get_accountant(name: str) -> type[Accountant]:
    """The accountant registered as ``name`` (KeyError naming the choices otherwise)."""
    if name not in ACCOUNTANTS:
        raise KeyError(f"unknown accountant '{name}'{did_you_mean(name, list(ACCOUNTANTS))}; choose one of: {', '.join(ACCOUNTANTS)}")
    return ACCOUNTANTS[name]
