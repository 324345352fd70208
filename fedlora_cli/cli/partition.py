"""Show how a recipe splits the training data into clients (label counts per client), without training.

Prints a table (client, size, samples per label) and writes a clients × labels heatmap PNG.
Examples: `fedlora partition`, `fedlora partition recipes/default.yaml partition.method=shards`,
`fedlora partition my.yaml partition.alpha=0.1 --png split.png --json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from fedlora_cli.cli.common import guarded, wants_json
from fedlora_cli.cli.train import _split_recipe_and_overrides
from fedlora_cli.data.partition import label_counts
from fedlora_cli.validate import check_recipe


def describe(recipe_label: str, method: str, label_names: list[str], counts: np.ndarray, png: Path | None) -> dict:
    """The partition as plain data (what ``--json`` prints)."""
    return {
        "recipe": recipe_label,
        "method": method,
        "label_names": label_names,
        "clients": [
            {"client": k, "size": int(row.sum()), "counts": {name: int(c) for name, c in zip(label_names, row)}}
            for k, row in enumerate(counts)
        ],
        "png": str(png) if png is not None else None,
    }


def partition_table(info: dict) -> Table:
    names = info["label_names"]
    table = Table(title=f"{info['method']} partition of {info['recipe']}", title_justify="left")
    table.add_column("client", justify="right")
    table.add_column("size", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for client in info["clients"]:
        table.add_row(str(client["client"]), str(client["size"]), *(str(client["counts"][n]) for n in names))
    totals = [sum(c["counts"][n] for c in info["clients"]) for n in names]
    table.add_section()
    table.add_row("all", str(sum(totals)), *(str(t) for t in totals))
    return table


@guarded
def partition(
    recipe: Optional[str] = typer.Argument(None, help="recipe file or builtin name (default: default)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides, e.g. partition.method=shards"),
    png: Path = typer.Option(Path("partition.png"), "--png", help="where to write the heatmap PNG"),
    json_output: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    # torch, transformers and opacus load when the command runs, so `fedlora --help` is fast
    from fedlora_cli.report.plots import plot_partition

    recipe, overrides = _split_recipe_and_overrides(recipe, list(overrides or []))
    checked = check_recipe(recipe, overrides)
    names = checked.train.label_names
    counts = label_counts(checked.train.labels, checked.client_indices, len(names))
    method = checked.recipe.partition.method
    written = plot_partition(counts, names, png, f"{method} partition, {len(counts)} clients ({checked.source.name})")
    info = describe(str(checked.source), method, names, counts, written)
    if wants_json(json_output):
        print(json.dumps(info))
        return
    console = Console()
    console.print(partition_table(info))
    console.print(f"heatmap: {written}", markup=False, highlight=False)
