"""``iid``: random near-equal parts (the IID baseline of McMahan et al. 2017)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from fedlora_cli.data.partitioners.base import PartitionOptions, register


class IIDOptions(PartitionOptions):
    method: Literal["iid"] = "iid"


@register(IIDOptions)
def iid(labels: np.ndarray, clients: int, cfg: IIDOptions) -> list[np.ndarray]:
    """A seeded random permutation cut into near-equal parts."""
    order = np.random.default_rng(cfg.seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, clients)]
