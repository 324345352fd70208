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

from fedlora_cli.cli.common import EXIT_BAD_INPUT, guarded, print_input_error, print_warnings, progress
from fedlora_cli.errors import InputError
from fedlora_cli.recipe import builtin_recipes, resolve_recipe_path
from fedlora_cli.validate import check_rank, check_recipe

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


def _pct(share: float) -> str:
    return f"{share:.1%}"


def _mix(shares: dict[str, float], top: int = 3) -> str:
    ranked = sorted(shares.items(), key=lambda item: -item[1])[:top]
    return " · ".join(f"{name} {share:.0%}" for name, share in ranked if share > 0)


def print_report(label: str, report: dict) -> None:
    """The data report of one recipe as text and two tables on stdout."""
    console = Console()
    rows, cut = report["rows"], report["truncated_share"]
    console.print(
        f"{label}: ok: {rows['train']} train and {rows['test']} test rows; data.max_length {report['max_length']} "
        f"cuts {_pct(cut['train'])} of train and {_pct(cut['test'])} of test texts",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    labels = Table("label", "train", "share", "test", "share", title="labels", title_justify="left")
    for row in report["labels"]:
        labels.add_row(row["label"], str(row["train"]), _pct(row["train_share"]), str(row["test"]), _pct(row["test_share"]))
    console.print(labels)
    sample_level = report["privacy_level"] == "sample"
    title = f"clients ({report['rounds']} rounds of {report['local_steps']} local steps)"
    if report["privacy_level"] == "client":
        title += f" (client-level DP: sample rate {report['client_sample_rate']:.4g}, noise multiplier {report['noise_multiplier']:.4g})"
    clients = Table("client", "examples", "label mix (top 3)", title=title, title_justify="left")
    if sample_level:
        clients.add_column("sample rate", justify="right")
        clients.add_column("noise multiplier", justify="right")
    for row in report["clients"]:
        privacy = [f"{row['sample_rate']:.4f}", f"{row['noise_multiplier']:.4f}"] if sample_level else []
        clients.add_row(str(row["client"]), str(row["examples"]), _mix(row["label_shares"]), *privacy)
    console.print(clients)


def _checked_report(recipe: str | None, overrides: list[str], tokenizers: dict) -> dict:
    """Check one recipe and report on its data (InputError for any problem, the tokenizer's too)."""
    # transformers and opacus load only for a recipe that needs them
    from fedlora_cli.data_report import data_report
    from fedlora_cli.models import load_tokenizer

    checked = check_recipe(recipe, overrides)
    name = checked.recipe.model.name
    try:
        if name not in tokenizers:
            tokenizers[name] = load_tokenizer(name)
        check_rank(checked.recipe.model, checked.recipe.task)
    except InputError as exc:
        raise InputError(exc.problems, source=str(checked.source)) from None
    return data_report(checked, tokenizers[name])


@app.command("validate")
@guarded
def validate(
    args: Optional[list[str]] = typer.Argument(
        None, help="recipe files or builtin names, then key.sub=value overrides applied to each (default: default)"
    ),
    json_output: bool = typer.Option(False, "--json", help="a JSON list, one object per recipe, on stdout"),
) -> None:
    """Check recipes completely (schema, data files, client split, privacy plan, LoRA rank against the
    model's layers) without training,
    and report on the data: rows, labels, truncation, clients, with warnings for hopeless clients."""
    recipes, overrides = _recipes_and_overrides(list(args or []))
    results, tokenizers = [], {}
    for recipe in recipes:
        label = recipe or "default"
        try:
            with progress(f"checking {label}: data, client split, privacy plan, token lengths", show=not json_output):
                report = _checked_report(recipe, overrides, tokenizers)
        except InputError as exc:
            results.append({"recipe": label, "ok": False, "problems": exc.problems})
            if not json_output:
                print_input_error(exc)
            continue
        results.append({"recipe": label, "ok": True, "problems": [], **report})
        if not json_output:
            print_report(label, report)
            print_warnings(report["warnings"], f"{label}: ")
    if json_output:
        print(json.dumps(results))
    if not all(r["ok"] for r in results):
        raise typer.Exit(EXIT_BAD_INPUT)
