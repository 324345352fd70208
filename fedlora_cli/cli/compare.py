"""Compare runs side by side: final accuracy, epsilon, bytes, wall time, method; one plot of all.

Examples: `fedlora compare runs/a runs/b`, `fedlora compare runs/* --png methods.png --json`.
A run that has not finished is shown from the rounds it completed (finished: no).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedlora_cli.cli.common import guarded, wants_json
from fedlora_cli.errors import InputError
from fedlora_cli.report.console import _fmt, _json_ready, human_bytes


def _labels(records: list[dict]) -> list[str]:
    """Run directory names, or full paths where two names clash."""
    names = [r["name"] for r in records]
    return [r["name"] if names.count(r["name"]) == 1 else r["run_dir"] for r in records]


def compare_table(records: list[dict], labels: list[str]) -> Table:
    table = Table(title="fedlora runs", title_justify="left")
    table.add_column("run")
    for column in ("method", "partition", "privacy", "rounds", "final accuracy", "epsilon", "up", "down", "wall s", "finished"):
        table.add_column(column, justify="right" if column not in {"method", "partition", "privacy"} else "left")
    for label, r in zip(labels, records):
        table.add_row(
            label,
            r["method"],
            r["partition"],
            r["privacy_level"],
            str(r["rounds_completed"]),
            _fmt(r["final_accuracy"]),
            _fmt(r["epsilon"], 3),
            human_bytes(r["bytes_up_total"]),
            human_bytes(r["bytes_down_total"]),
            _fmt(r["wall_seconds"], 1),
            "yes" if r["finished"] else "no",
        )
    return table


@guarded
def compare(
    run_dirs: list[Path] = typer.Argument(..., help="run directories"),
    png: Path = typer.Option(Path("compare.png"), "--png", help="where to write the plot of all runs"),
    json_output: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    # torch, transformers and opacus load when the command runs, so `fedlora --help` is fast
    from fedlora_cli.federation.artifacts import run_record
    from fedlora_cli.report.plots import plot_runs

    if not run_dirs:
        raise InputError("give at least one run directory")
    records = [run_record(path) for path in run_dirs]
    labels = _labels(records)
    written = plot_runs([(label, r["metrics"]) for label, r in zip(labels, records)], png)
    if wants_json(json_output):
        runs = [{"label": label, **{k: v for k, v in r.items() if k != "metrics"}} for label, r in zip(labels, records)]
        print(json.dumps(_json_ready({"runs": runs, "png": str(written)})))
        return
    console = Console()
    console.print(compare_table(records, labels))
    console.print(f"plot: {written}", markup=False, highlight=False)
