"""``quantity``: client sizes from a power law or Dir(size_alpha), labels IID
(Caldas et al. 2018 / Li et al. 2020; Li et al. 2022)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fedlora_cli.data.partitioners.base import PartitionOptions, register
from fedlora_cli.errors import InputError


class QuantityOptions(PartitionOptions):
    method: Literal["quantity"] = "quantity"
    size_distribution: Literal["power_law", "dirichlet"] = Field(
        "power_law", description="client sizes from a power law over ranks or a Dirichlet over sizes"
    )
    power_law_exponent: float = Field(
        1.0, ge=0, description="power_law: size of the k-th largest client ∝ k^-exponent (0: equal)"
    )
    size_alpha: float = Field(1.0, gt=0, description="dirichlet: concentration over sizes (smaller: more unequal)")


def _sizes_from_shares(shares: np.ndarray, total: int, minimum: int) -> np.ndarray:
    """Integer sizes summing to ``total``: ``minimum`` each, the rest in proportion to ``shares``
    (largest remainders get the leftover samples, ties to the lower client index)."""
    free = total - minimum * len(shares)
    exact = shares / shares.sum() * free
    extra = np.floor(exact).astype(np.int64)
    leftover = free - int(extra.sum())
    extra[np.argsort(-(exact - extra), kind="stable")[:leftover]] += 1
    return extra + minimum


@register(QuantityOptions)
def quantity(labels: np.ndarray, clients: int, cfg: QuantityOptions) -> list[np.ndarray]:
    """Quantity skew: unequal client sizes, labels IID within each client.

    ``size_distribution: power_law`` — the client at (seeded random) rank k gets a share
    ∝ k^-power_law_exponent (Zipf's law over ranks; the power-law client sizes of LEAF,
    Caldas et al. 2018, and FedProx, Li et al. 2020). ``size_distribution: dirichlet`` —
    shares ~ Dir(size_alpha) (quantity skew of Li et al. 2022, NIID-Bench).
    Every client first gets ``min_samples``; the rest of the samples are shared out in
    proportion to the shares, then a seeded permutation of the samples is cut at those sizes.
    """
    rng = np.random.default_rng(cfg.seed)
    if cfg.size_distribution == "power_law":
        ranks = rng.permutation(clients) + 1
        shares = ranks.astype(np.float64) ** (-cfg.power_law_exponent)
    else:
        shares = rng.dirichlet(np.full(clients, cfg.size_alpha))
        if not np.all(np.isfinite(shares)) or shares.sum() <= 0:
            raise InputError(
                f"partition.size_alpha={cfg.size_alpha} is too small for a numerically stable Dirichlet draw; raise it"
            )
    sizes = _sizes_from_shares(shares, len(labels), cfg.min_samples)
    order = rng.permutation(len(labels))
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]
