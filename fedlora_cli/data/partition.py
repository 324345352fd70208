"""Partitioners: split a training set's indices into federated clients.

Every partitioner is deterministic for its seed, assigns each sample to exactly one client,
and guarantees ``min_samples`` per client (or raises InputError saying what to change).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fedlora_cli.errors import InputError
from fedlora_cli.recipe import PartitionConfig

Partitioner = Callable[[np.ndarray, int, PartitionConfig], list[np.ndarray]]
PARTITIONERS: dict[str, Partitioner] = {}

MAX_DIRICHLET_DRAWS = 1000


def partitioner(name: str):
    def register(fn: Partitioner) -> Partitioner:
        if name in PARTITIONERS:
            raise ValueError(f"partitioner '{name}' registered twice")
        PARTITIONERS[name] = fn
        return fn

    return register


@partitioner("iid")
def iid(labels: np.ndarray, clients: int, cfg: PartitionConfig) -> list[np.ndarray]:
    """A seeded random permutation cut into near-equal parts."""
    order = np.random.default_rng(cfg.seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, clients)]


@partitioner("dirichlet")
def dirichlet(labels: np.ndarray, clients: int, cfg: PartitionConfig) -> list[np.ndarray]:
    """Label-skewed split (Hsu et al. 2019): for each class, client shares ~ Dir(alpha).

    Redraws (with the same seeded generator) until every client has ``min_samples``.
    """
    rng = np.random.default_rng(cfg.seed)
    classes = np.unique(labels)
    for _ in range(MAX_DIRICHLET_DRAWS):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for cls in classes:
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(clients, cfg.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= cfg.min_samples:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise InputError(
        f"partition: no Dirichlet(alpha={cfg.alpha}) split of {len(labels)} samples gives all "
        f"{clients} clients at least {cfg.min_samples} samples in {MAX_DIRICHLET_DRAWS} draws; "
        "raise partition.alpha, lower partition.min_samples or federation.clients"
    )


def partition(labels, clients: int, cfg: PartitionConfig) -> list[np.ndarray]:
    """Client index arrays for a recipe's partition section."""
    labels = np.asarray(labels)
    if len(labels) < clients * cfg.min_samples:
        raise InputError(
            f"partition: {len(labels)} training samples are too few for {clients} clients with "
            f"partition.min_samples={cfg.min_samples}; lower federation.clients or partition.min_samples, "
            "or use more data"
        )
    parts = PARTITIONERS[cfg.method](labels, clients, cfg)
    too_small = [i for i, part in enumerate(parts) if len(part) < cfg.min_samples]
    if too_small:
        raise InputError(
            f"partition: clients {too_small} get fewer than partition.min_samples={cfg.min_samples} "
            f"samples with partition.method={cfg.method}; lower the minimum or the number of clients"
        )
    return parts
