"""Aggregation methods, one module each, behind :class:`~fedlora_cli.methods.base.Method`."""

from fedlora_cli.methods.registry import METHODS, REGISTRY, get_method_class

REGISTRY.discover(__name__)

__all__ = ["METHODS", "REGISTRY", "get_method_class"]
