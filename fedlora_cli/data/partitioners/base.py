"""Name -> partitioner, each with its own option model (the recipe's ``partition`` section).

A partitioner is one module in this package: an option model (a subclass of
:class:`PartitionOptions` whose ``method`` is ``Literal['<name>']``) and a function
``(labels, clients, options) -> list of index arrays`` registered with ``@register(TheOptions)``.
It must be deterministic for ``options.seed`` and assign every sample to exactly one client;
:func:`fedlora_cli.data.partition.partition` checks ``min_samples``.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np
from pydantic import Field

from fedlora_cli.registry import Options, Registry
from fedlora_cli.seeding import MAX_SEED


class PartitionOptions(Options):
    """The ``partition`` section: ``method`` picks the partitioner; each adds its own options."""

    method: str
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the split (the same seed gives the same clients)")
    min_samples: int = Field(32, ge=1, description="every client gets at least this many examples")

    #: what to change when a client gets fewer than min_samples
    min_samples_fix: ClassVar[str] = "lower partition.min_samples or federation.clients"


Partitioner = Callable[[np.ndarray, int, PartitionOptions], list[np.ndarray]]

REGISTRY: Registry[Partitioner] = Registry("partition", key="method", default="dirichlet")
PARTITIONERS = REGISTRY.implementations  # name -> partitioner function
register = REGISTRY.register
