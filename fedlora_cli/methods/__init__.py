"""Aggregation methods, one module each, behind :class:`~fedlora_cli.methods.base.Method`."""

from fedlora_cli.methods import fedavg, ffa, fedsvd  # noqa: F401  (registers the methods)
from fedlora_cli.methods.registry import METHODS, get_method_class

__all__ = ["METHODS", "get_method_class"]
