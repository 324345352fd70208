"""``pathological``: exactly k labels per client, "#C=k" (Li et al. 2022, NIID-Bench)."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from fedlora_cli.data.partitioners.base import PartitionOptions, register
from fedlora_cli.errors import InputError


class PathologicalOptions(PartitionOptions):
    method: Literal["pathological"] = "pathological"
    labels_per_client: int = Field(2, ge=1, description="distinct labels each client holds")

    min_samples_fix: ClassVar[str] = "raise partition.labels_per_client, lower partition.min_samples or federation.clients"


@register(PathologicalOptions)
def pathological(labels: np.ndarray, clients: int, cfg: PathologicalOptions) -> list[np.ndarray]:
    """Label-quantity skew "#C=k" (after McMahan et al. 2017): each client holds exactly
    ``labels_per_client`` distinct labels, and each label's samples are shuffled and divided
    equally among the clients that hold it.

    Labels are dealt cyclically over a seeded permutation of labels and of clients (client at
    position p gets labels ``p·k … p·k+k-1`` mod L), so every label has an owner (no sample is
    dropped) and the owners per label differ by at most one.
    """
    classes = np.unique(labels)
    k = cfg.labels_per_client
    if k > len(classes):
        raise InputError(
            f"partition.labels_per_client={k} but the training data has only {len(classes)} labels; "
            f"set partition.labels_per_client to at most {len(classes)}"
        )
    if k * clients < len(classes):
        need = -(-len(classes) // clients)
        raise InputError(
            f"partition: {clients} clients x labels_per_client={k} cannot cover all {len(classes)} labels, so some "
            f"samples would belong to no client; set partition.labels_per_client to at least {need} or raise federation.clients"
        )
    rng = np.random.default_rng(cfg.seed)
    label_order = rng.permutation(classes)
    client_order = rng.permutation(clients)
    owners: dict[int, list[int]] = {int(cls): [] for cls in classes}
    for position, client in enumerate(client_order):
        for j in range(k):
            owners[int(label_order[(position * k + j) % len(classes)])].append(int(client))
    parts: list[list[int]] = [[] for _ in range(clients)]
    for cls in classes:
        members = rng.permutation(np.flatnonzero(labels == cls))
        holders = sorted(owners[int(cls)])
        for client, chunk in zip(holders, np.array_split(members, len(holders))):
            parts[client].extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
