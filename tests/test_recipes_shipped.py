"""Every shipped recipe validates, starts with the command that runs it, and the per-method
recipes differ from the default only in their method section (so a user can diff them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.data.sources import BUILTIN_SOURCES
from fedlora_cli.methods import METHODS
from fedlora_cli.recipe import builtin_recipes

RECIPES = builtin_recipes()
OWN_KEYS = {"name", "description", "method"}


def test_there_is_a_recipe_per_method():
    assert set(METHODS) <= set(RECIPES)


def data_files(name: str) -> list[Path]:
    """The data files a shipped recipe reads that are not shipped (its non-builtin data paths)."""
    data = yaml.safe_load(RECIPES[name].read_text(encoding="utf-8"))["data"]
    paths = [data.get("source"), data.get("test_path")]
    return [(RECIPES[name].parent / p).resolve() for p in paths if p is not None and p not in BUILTIN_SOURCES]


SHIPPED_DATA = [name for name in sorted(RECIPES) if not data_files(name)]
EXTERNAL_DATA = [name for name in sorted(RECIPES) if data_files(name)]


def validate(names: list[str]) -> None:
    result = CliRunner().invoke(app, ["recipes", "validate", "--json", *(str(RECIPES[n]) for n in names)])
    assert result.exit_code == 0, result.output
    assert all(entry["ok"] for entry in json.loads(result.stdout))


def test_every_shipped_recipe_with_shipped_data_validates():
    validate(SHIPPED_DATA)


@pytest.mark.parametrize("name", EXTERNAL_DATA)
def test_a_recipe_whose_data_is_not_shipped_says_how_to_get_it_and_validates_with_it(name):
    header = "".join(line for line in RECIPES[name].read_text(encoding="utf-8").splitlines(True) if line.startswith("#"))
    assert "The data is not shipped. Get it:" in header
    missing = [str(path) for path in data_files(name) if not path.exists()]
    if missing:
        pytest.skip(f"{name} reads {', '.join(missing)}, not here (shared data beside the project; see the recipe's header)")
    validate([name])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_first_line_is_the_command_that_runs_it(name):
    first = RECIPES[name].read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# fedlora ")
    if name == "default":
        assert first == "# fedlora train"
    elif name in METHODS:
        assert first == f"# fedlora train recipes/{name}.yaml"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_recipes_change_only_the_method(name):
    """...and, for methods that fold updates into the frozen weights (no server step size: refused),
    the server step: plain averaging after twice the local steps."""
    default = yaml.safe_load(RECIPES["default"].read_text(encoding="utf-8"))
    tree = yaml.safe_load(RECIPES[name].read_text(encoding="utf-8"))
    assert tree["name"] == tree["method"]["name"] == name
    expected = {k: v for k, v in default.items() if k not in OWN_KEYS}
    if METHODS.get(name).modifies_base:
        federation = {k: v for k, v in expected["federation"].items() if k != "server_lr"}
        expected["federation"] = {**federation, "server_optimizer": "none", "local_steps": 2 * federation["local_steps"]}
    assert {k: v for k, v in tree.items() if k not in OWN_KEYS} == expected
