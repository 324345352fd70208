"""``rdp``: Rényi DP of the subsampled Gaussian (Mironov 2017; Mironov et al. 2019), an upper bound."""

from __future__ import annotations

import warnings

from fedlora_cli.privacy.accountants.base import Accountant, register


@register
class RDP(Accountant):
    name = "rdp"
    note = "Renyi DP (Mironov 2017; Mironov et al. 2019): an upper bound, slightly loose"

    @staticmethod
    def opacus_class() -> type:
        from opacus.accountants import RDPAccountant

        return RDPAccountant

    @classmethod
    def floor(cls, delta: float) -> float:
        """With zero Rényi divergence the conversion of Balle et al. 2020 (as Opacus does it) still
        gives ``min_α [log((α−1)/α) − (log δ + log α)/(α−1)] > 0`` over Opacus's orders α."""
        from opacus.accountants.analysis.rdp import get_privacy_spent

        orders = cls.opacus_class().DEFAULT_ALPHAS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "optimal order is the largest alpha": expected in the limit
            eps, _ = get_privacy_spent(orders=orders, rdp=[0.0] * len(orders), delta=delta)
        return float(eps)
