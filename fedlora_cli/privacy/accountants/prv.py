"""``prv``: privacy random variables (Gopi et al. 2021), a numerically tight upper estimate."""

from __future__ import annotations

from fedlora_cli.privacy.accountants.base import Accountant, register
from fedlora_cli.privacy.limits import PRV_MAX_STEPS

PRV_EPS_ERROR = 0.01  # Opacus PRVAccountant.get_epsilon's default eps_error


@register
class PRV(Accountant):
    name = "prv"
    note = "privacy random variables (Gopi et al. 2021): numerically tight upper estimate"
    max_steps = PRV_MAX_STEPS

    @staticmethod
    def opacus_class() -> type:
        from opacus.accountants import PRVAccountant

        return PRVAccountant

    @classmethod
    def floor(cls, delta: float) -> float:
        """Opacus reports the PRV estimate plus its ``eps_error``."""
        return PRV_EPS_ERROR
