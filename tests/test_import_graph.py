"""No import cycle inside fedlora_cli.

The graph is read with ``ast`` from the source: an edge A → B for every ``import`` or
``from ... import`` statement anywhere in A (module level, inside functions, inside ``try``)
that names B or a module inside B's package, and, for a package whose ``__init__`` discovers
its modules (``.discover(__name__)``, :mod:`fedlora_cli.registry`), an edge from the package to
every module in it. Imports under ``if TYPE_CHECKING:`` count too: a module that needs
another's types for checking depends on it.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

PACKAGE = "fedlora_cli"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def imported_names(path: Path, name: str) -> set[str]:
    """Absolute names of what the module imports (``from a import b`` gives ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif path.name == "__init__.py" and isinstance(node, ast.Call) and _called_name(node) == "discover":
            names.update(f"{name}.{child.stem}" for child in path.parent.glob("*.py") if child.name != "__init__.py")
    return names


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in ROOT.rglob("*.py")}
    return {
        name: {target for target in imported_names(path, name) if target in modules and target != name}
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "fedlora_cli.recipe" in graph["fedlora_cli.models"]  # module level
    assert "fedlora_cli.privacy.planning" in graph["fedlora_cli.cli.accountant"]  # inside the command function
    assert "fedlora_cli.methods.fedsvd" in graph["fedlora_cli.methods"]  # discovered by the package
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_under_type_checking_count(tmp_path):
    module = tmp_path / "mod.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fedlora_cli.recipe import Recipe\n", encoding="utf-8")
    assert "fedlora_cli.recipe" in imported_names(module, "fedlora_cli.data.mod")


def test_relative_imports_resolve_against_the_package(tmp_path):
    module = tmp_path / "mod.py"
    module.write_text("from .sibling import thing\nfrom .. import other\n", encoding="utf-8")
    assert {"fedlora_cli.data.sibling", "fedlora_cli.other"} <= imported_names(module, "fedlora_cli.data.mod")


def test_no_import_cycle():
    assert cycles(import_graph()) == [], "import cycles (a lazy import inside a function counts)"


def test_every_package_is_shipped():
    """The registries discover modules in their packages: a package left out of the wheel loses its choices."""
    config = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {module_name(path) for path in ROOT.rglob("__init__.py")}
    assert packages <= set(config["tool"]["setuptools"]["packages"])
