"""``gdp``: Gaussian DP by the central limit theorem (Dong et al. 2019), an approximation.

It can underestimate epsilon (the gdp noise for epsilon 3 at q=0.01, T=1000 is 0.742, which
spends 3.88 by the tight prv accountant), so it reports epsilon but never calibrates noise.
"""

from __future__ import annotations

from fedlora_cli.privacy.accountants.base import Accountant, register


@register
class GDP(Accountant):
    name = "gdp"
    note = "Gaussian DP CLT (Dong et al. 2019): an approximation that can underestimate epsilon"
    calibrates = False

    @staticmethod
    def opacus_class() -> type:
        from opacus.accountants import GaussianAccountant

        return GaussianAccountant
