"""Partitioners, one module each: how a training set is split into clients."""

from fedlora_cli.data.partitioners.base import PARTITIONERS, REGISTRY, PartitionOptions
from fedlora_cli.registry import discover

discover(__name__)

__all__ = ["PARTITIONERS", "REGISTRY", "PartitionOptions"]
