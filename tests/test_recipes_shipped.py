"""Every shipped recipe validates, starts with the command that runs it, and the per-method
recipes differ from the default only in their method section (so a user can diff them)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.methods import METHODS
from fedlora_cli.recipe import builtin_recipes

RECIPES = builtin_recipes()
OWN_KEYS = {"name", "description", "method"}


def test_there_is_a_recipe_per_method():
    assert set(METHODS) <= set(RECIPES)


def test_every_shipped_recipe_validates():
    result = CliRunner().invoke(app, ["recipes", "validate", "--json", *map(str, RECIPES.values())])
    assert result.exit_code == 0, result.output
    assert all(entry["ok"] for entry in json.loads(result.stdout))


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
    default = yaml.safe_load(RECIPES["default"].read_text(encoding="utf-8"))
    tree = yaml.safe_load(RECIPES[name].read_text(encoding="utf-8"))
    assert tree["name"] == tree["method"]["name"] == name
    assert {k: v for k, v in tree.items() if k not in OWN_KEYS} == {k: v for k, v in default.items() if k not in OWN_KEYS}
