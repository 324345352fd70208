"""`fedlora recipes list|show|validate|copy`: the builtin recipes and checking your own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from fedlora_cli.cli.common import EXIT_BAD_INPUT, guarded, print_input_error
from fedlora_cli.errors import InputError
from fedlora_cli.recipe import builtin_recipes, resolve_recipe_path
from fedlora_cli.validate import check_recipe

app = typer.Typer(help="List, show, copy and validate recipes.", no_args_is_help=True)


def _description(path: Path) -> str:
    tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return str(tree.get("description", "")).strip().splitlines()[0] if tree.get("description") else ""


@app.command("list")
@guarded
def list_recipes(json_output: bool = typer.Option(False, "--json")) -> None:
    """The builtin recipes."""
    recipes = {name: _description(path) for name, path in builtin_recipes().items()}
    if json_output:
        print(json.dumps([{"name": n, "description": d} for n, d in recipes.items()]))
        return
    table = Table("name", "description")
    for name, description in recipes.items():
        table.add_row(name, description)
    Console().print(table)


@app.command("show")
@guarded
def show(name: str = typer.Argument(..., help="builtin recipe name or file")) -> None:
    """Print a recipe's YAML."""
    print(resolve_recipe_path(name).read_text(encoding="utf-8"), end="")


@app.command("copy")
@guarded
def copy(
    name: str = typer.Argument(..., help="builtin recipe name"),
    dest: Optional[Path] = typer.Argument(None, help="destination file (default: NAME.yaml here)"),
) -> None:
    """Write a builtin recipe to a file for editing."""
    source = resolve_recipe_path(name)
    dest = dest or Path(f"{Path(name).stem}.yaml")
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists():
        raise InputError(f"{dest} exists; choose another destination")
    shutil.copyfile(source, dest)
    print(dest)


def _recipes_and_overrides(args: list[str]) -> tuple[list[str | None], list[str]]:
    """Recipe files or names, and ``key.sub=value`` overrides (applied to each); none: the default."""
    overrides = [arg for arg in args if "=" in arg and not Path(arg).exists()]
    recipes = [arg for arg in args if arg not in overrides]
    return recipes or [None], overrides


@app.command("validate")
@guarded
def validate(
    args: Optional[list[str]] = typer.Argument(
        None, help="recipe files or builtin names, then key.sub=value overrides applied to each (default: default)"
    ),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Check recipes completely (schema, data files, client split, privacy plan) without training."""
    recipes, overrides = _recipes_and_overrides(list(args or []))
    results = []
    for recipe in recipes:
        label = recipe or "default"
        try:
            check_recipe(recipe, overrides)
            results.append({"recipe": label, "ok": True, "problems": []})
        except InputError as exc:
            results.append({"recipe": label, "ok": False, "problems": exc.problems})
            if not json_output:
                print_input_error(exc)
    if json_output:
        print(json.dumps(results))
    else:
        for result in results:
            if result["ok"]:
                print(f"{result['recipe']}: ok")
    if not all(r["ok"] for r in results):
        raise typer.Exit(EXIT_BAD_INPUT)
