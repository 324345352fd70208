"""Split a training set's indices into federated clients with the recipe's partitioner.

The partitioners are one module each in :mod:`fedlora_cli.data.partitioners` (``iid``,
``dirichlet``, ``pathological``, ``shards``, ``quantity``). Each is deterministic for its seed
and assigns each sample to exactly one client; :func:`partition` guarantees ``min_samples``
per client (or raises InputError saying what to change).
"""

from __future__ import annotations

import numpy as np

from fedlora_cli.data.partitioners import PARTITIONERS, PartitionOptions
from fedlora_cli.errors import InputError


def label_counts(labels, parts: list[np.ndarray], num_labels: int) -> np.ndarray:
    """A clients × labels matrix: how many samples of each label every client holds."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[part], minlength=num_labels) for part in parts]) if parts else np.zeros((0, num_labels), dtype=np.int64)


def partition(labels, clients: int, cfg: PartitionOptions) -> list[np.ndarray]:
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
            f"samples with partition.method={cfg.method} (sizes {[len(p) for p in parts]}); {cfg.min_samples_fix}"
        )
    return parts
