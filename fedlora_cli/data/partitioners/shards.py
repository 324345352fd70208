"""``shards``: sort by label, cut into shards, deal shards (McMahan et al. 2017, FedAvg)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fedlora_cli.data.partitioners.base import PartitionOptions, register
from fedlora_cli.errors import InputError


class ShardsOptions(PartitionOptions):
    method: Literal["shards"] = "shards"
    shards_per_client: int = Field(2, ge=1, description="label-sorted shards dealt to each client")


@register(ShardsOptions)
def shards(labels: np.ndarray, clients: int, cfg: ShardsOptions) -> list[np.ndarray]:
    """Sort the samples by label (ties in a seeded random order), cut them into
    ``clients × shards_per_client`` contiguous shards of near-equal size, and deal a seeded
    random ``shards_per_client`` shards to each client. Each client sees roughly
    ``shards_per_client`` labels; all clients have near-equal sizes.
    """
    count = clients * cfg.shards_per_client
    if count > len(labels):
        raise InputError(
            f"partition: {clients} clients x shards_per_client={cfg.shards_per_client} = {count} shards, but only "
            f"{len(labels)} training samples; lower partition.shards_per_client or federation.clients"
        )
    rng = np.random.default_rng(cfg.seed)
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    pieces = np.array_split(by_label, count)
    dealt = rng.permutation(count)
    return [
        np.sort(np.concatenate([pieces[s] for s in dealt[c * cfg.shards_per_client : (c + 1) * cfg.shards_per_client]]))
        for c in range(clients)
    ]
