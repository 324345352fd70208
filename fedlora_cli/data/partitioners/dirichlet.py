"""``dirichlet``: label skew, per label client shares ~ Dir(alpha) (Hsu et al. 2019)."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from fedlora_cli.data.partitioners.base import PartitionOptions, register
from fedlora_cli.errors import InputError

MAX_DIRICHLET_DRAWS = 1000


class DirichletOptions(PartitionOptions):
    method: Literal["dirichlet"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="concentration over labels (smaller: more skewed)")

    min_samples_fix: ClassVar[str] = "raise partition.alpha, lower partition.min_samples or federation.clients"


@register(DirichletOptions)
def dirichlet(labels: np.ndarray, clients: int, cfg: DirichletOptions) -> list[np.ndarray]:
    """For each class, client shares ~ Dir(alpha); redraws (with the same seeded generator)
    until every client has ``min_samples``."""
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
