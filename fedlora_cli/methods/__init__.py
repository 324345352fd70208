"""Aggregation methods, one module each, behind :class:`~fedlora_cli.methods.base.Method`."""

from fedlora_cli.methods.registry import METHODS, REGISTRY, get_method_class
from fedlora_cli.registry import discover

discover(__name__)

__all__ = ["METHODS", "REGISTRY", "get_method_class"]
