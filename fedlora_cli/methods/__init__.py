"""Aggregation methods, one module each, behind :class:`~fedlora_cli.methods.base.Method`."""

from fedlora_cli.methods import fedavg, fedex, fedsb, fedsvd, ffa, flora  # noqa: F401  (registers the methods)
from fedlora_cli.methods.registry import METHODS, get_method_class

__all__ = ["METHODS", "get_method_class"]
