"""Name -> method class. Adding a method is one new module with an ``@register`` class."""

from __future__ import annotations

from fedlora_cli.methods.base import Method

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in METHODS:
        raise ValueError(f"method '{cls.name}' is registered twice ({METHODS[cls.name].__module__}, {cls.__module__})")
    METHODS[cls.name] = cls
    return cls


def get_method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method '{name}'; known: {', '.join(sorted(METHODS))}") from None
