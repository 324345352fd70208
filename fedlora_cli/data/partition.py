"""Partitioners: split a training set's indices into federated clients.

Every partitioner is deterministic for its seed, assigns each sample to exactly one client,
and guarantees ``min_samples`` per client (or raises InputError saying what to change).

- ``iid``: random near-equal parts (the IID baseline of McMahan et al. 2017);
- ``dirichlet``: per label, client shares ~ Dir(alpha) (Hsu et al. 2019);
- ``pathological``: exactly k labels per client, "#C=k" (Li et al. 2022, NIID-Bench);
- ``shards``: sort by label, cut into shards, deal shards (McMahan et al. 2017);
- ``quantity``: client sizes from a power law or Dir(size_alpha), labels IID
  (Caldas et al. 2018 / Li et al. 2020; Li et al. 2022).
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
    """A seeded random permutation cut into near-equal parts (the IID baseline of McMahan et al. 2017)."""
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


@partitioner("pathological")
def pathological(labels: np.ndarray, clients: int, cfg: PartitionConfig) -> list[np.ndarray]:
    """Label-quantity skew "#C=k" (Li et al. 2022, NIID-Bench; after McMahan et al. 2017):
    each client holds exactly ``labels_per_client`` distinct labels, and each label's samples
    are shuffled and divided equally among the clients that hold it.

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


@partitioner("shards")
def shards(labels: np.ndarray, clients: int, cfg: PartitionConfig) -> list[np.ndarray]:
    """Pathological non-IID shards (McMahan et al. 2017, FedAvg): sort the samples by label
    (ties in a seeded random order), cut them into ``clients × shards_per_client`` contiguous
    shards of near-equal size, and deal a seeded random ``shards_per_client`` shards to each client.
    Each client sees roughly ``shards_per_client`` labels; all clients have near-equal sizes.
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


def _sizes_from_shares(shares: np.ndarray, total: int, minimum: int) -> np.ndarray:
    """Integer sizes summing to ``total``: ``minimum`` each, the rest in proportion to ``shares``
    (largest remainders get the leftover samples, ties to the lower client index)."""
    free = total - minimum * len(shares)
    exact = shares / shares.sum() * free
    extra = np.floor(exact).astype(np.int64)
    leftover = free - int(extra.sum())
    extra[np.argsort(-(exact - extra), kind="stable")[:leftover]] += 1
    return extra + minimum


@partitioner("quantity")
def quantity(labels: np.ndarray, clients: int, cfg: PartitionConfig) -> list[np.ndarray]:
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


def label_counts(labels, parts: list[np.ndarray], num_labels: int) -> np.ndarray:
    """A clients × labels matrix: how many samples of each label every client holds."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[part], minlength=num_labels) for part in parts]) if parts else np.zeros((0, num_labels), dtype=np.int64)


MIN_SAMPLES_FIX = {
    "pathological": "raise partition.labels_per_client, lower partition.min_samples or federation.clients",
    "shards": "lower partition.min_samples or federation.clients",
    "dirichlet": "raise partition.alpha, lower partition.min_samples or federation.clients",
}


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
            f"samples with partition.method={cfg.method} (sizes {[len(p) for p in parts]}); "
            + MIN_SAMPLES_FIX.get(cfg.method, "lower partition.min_samples or federation.clients")
        )
    return parts
