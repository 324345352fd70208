"""Registries of choices that own their options: aggregation methods and partitioners.

A choice is one module in its package. It registers its implementation under a name together
with a pydantic model of its own options (as peft's ``register_peft_method(name, config_cls,
model_cls)``); the option model has a field ``key`` (``name`` for methods, ``method`` for
partitioners) whose type is ``Literal[<name>]``. The package's ``__init__`` calls
:func:`discover`, which imports every module of the package, so adding a choice is adding one
module (accountants, which have no options, are found the same way). The recipe schema is built
from the registries: :meth:`Registry.choice` is a discriminated union on ``key`` of every
registered option model.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

T = TypeVar("T")


class Options(BaseModel):
    """Base of every options section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def did_you_mean(word: str, candidates: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or nothing."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """Name → (option model, implementation) for one kind of choice; duplicates are refused."""

    def __init__(self, section: str, key: str, default: str):
        self.section = section  # the recipe section, e.g. "method"
        self.key = key  # the option that names the choice, e.g. "name"
        self.default = default  # the choice when the recipe does not name one
        self.options: dict[str, type[Options]] = {}
        self.implementations: dict[str, T] = {}

    def register(self, options: type[Options]) -> Callable[[T], T]:
        """Decorator: register an implementation under the name its option model's ``key`` fixes."""
        name = _literal_name(options, self.key)

        def add(implementation: T) -> T:
            if name in self.options:
                raise ValueError(f"{self.section} '{name}' is registered twice")
            self.options[name] = options
            self.implementations[name] = implementation
            return implementation

        return add

    def names(self) -> list[str]:
        return sorted(self.options)

    def get(self, name: str) -> T:
        """The implementation registered as ``name`` (KeyError naming the choices otherwise)."""
        if name not in self.implementations:
            raise KeyError(self.unknown(name))
        return self.implementations[name]

    def unknown(self, name: Any) -> str:
        hint = did_you_mean(str(name), self.names())
        return f"unknown {self.section} '{name}'{hint}; choose one of: {', '.join(self.names())}"

    def owners(self, option: str) -> list[str]:
        """The choices whose options include ``option``."""
        return [name for name in self.names() if option in self.options[name].model_fields]

    def choice(self) -> Any:
        """The recipe section's type: a union of the option models discriminated by ``key``; a
        section that names no choice gets the default one."""

        def default_choice(value: Any) -> Any:
            return {self.key: self.default, **value} if isinstance(value, dict) and self.key not in value else value

        models = tuple(self.options[name] for name in self.names())
        union = Annotated[Union[models], Field(discriminator=self.key)] if len(models) > 1 else models[0]
        return Annotated[union, BeforeValidator(default_choice)]

    def parse(self, section: Any) -> Options:
        """The options of the choice ``section`` names (pydantic's ValidationError when invalid)."""
        return TypeAdapter(self.choice()).validate_python(section)

    def default_options(self) -> Options:
        return self.options[self.default]()


def discover(package: str) -> None:
    """Import every module of ``package``, so each one registers what it defines."""
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")


def _literal_name(options: type[Options], key: str) -> str:
    field = options.model_fields.get(key)
    args = get_args(field.annotation) if field is not None and get_origin(field.annotation) is Literal else ()
    if len(args) != 1 or field.default != args[0]:
        raise TypeError(f"{options.__name__}.{key} must be Literal['<name>'] with that name as its default")
    return args[0]
