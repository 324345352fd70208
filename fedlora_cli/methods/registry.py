"""Name -> aggregation method, each with its own option model (the recipe's ``method`` section).

A method is one module in this package: an option model (a subclass of :class:`MethodOptions`
whose ``name`` is ``Literal['<name>']``) and a :class:`~fedlora_cli.methods.base.Method`
subclass registered with ``@register(TheOptions)``. The package imports every module in it.
"""

from __future__ import annotations

from fedlora_cli.registry import Options, Registry


class MethodOptions(Options):
    """The ``method`` section: ``name`` picks the method; each method adds its own options."""

    name: str


REGISTRY: Registry[type] = Registry("method", key="name", default="fedsvd")
METHODS = REGISTRY.implementations  # name -> subclass of fedlora_cli.methods.base.Method
register = REGISTRY.register
get_method_class = REGISTRY.get
