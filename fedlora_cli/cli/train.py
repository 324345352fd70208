"""Run a private federated LoRA fine-tune from a recipe (default: the builtin `default`).

Examples: `fedlora train`, `fedlora train recipes/fedavg.yaml federation.rounds=3`,
`fedlora train --resume runs/default-fedsvd-20261122-101500`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from fedlora_cli.cli.common import (
    EXIT_BUDGET,
    EXIT_INTERRUPTED,
    err_console,
    guarded,
    print_warnings,
    progress,
    require_existing,
    wants_json,
)
from fedlora_cli.data_report import client_warnings
from fedlora_cli.errors import InputError
from fedlora_cli.recipe import dump_recipe
from fedlora_cli.report.console import JsonLinesReporter, LiveTableReporter
from fedlora_cli.threads import apply_threads
from fedlora_cli.validate import check_recipe


def _split_recipe_and_overrides(recipe: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """`fedlora train federation.rounds=2` means the default recipe with an override."""
    if recipe is not None and "=" in recipe and not Path(recipe).exists():
        return None, [recipe, *overrides]
    return recipe, overrides


def _warn(warnings: list[dict], as_json: bool) -> None:
    """Warnings about hopeless clients before round 1: on stderr, or as ``"type": "warning"`` JSON lines."""
    if as_json:
        for warning in warnings:
            print(json.dumps({"type": "warning", **warning}), flush=True)
    else:
        print_warnings(warnings)


@guarded
def train(
    recipe: Optional[str] = typer.Argument(None, help="recipe file or builtin name (default: default)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides, e.g. federation.rounds=3"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default: a new one under output.dir)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this directory"),
    json_output: bool = typer.Option(False, "--json", help="one JSON object per round on stdout"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no live table, only the final lines"),
) -> None:
    recipe, overrides = _split_recipe_and_overrides(recipe, list(overrides or []))
    as_json = wants_json(json_output)
    if out is not None and resume is None:
        from fedlora_cli.federation.run_dir import check_new_run_path

        check_new_run_path(out)  # before minutes of loading
    if resume is not None:
        if recipe is not None or overrides or out is not None:
            raise InputError("--resume takes the recipe from the run directory; drop the recipe, overrides and --out")
        from fedlora_cli.federation.run_dir import RunDir

        require_existing(resume, "--resume")
        run_dir = RunDir.existing(resume)
    with progress("checking the recipe, reading the data, planning privacy", show=not (as_json or quiet)) as phase:
        checked = check_recipe(str(run_dir.recipe_path) if resume is not None else recipe, overrides, saved=resume is not None)
        # transformers and opacus load only once the recipe is known to be good, so `fedlora --help`
        # and recipe errors come back in 1-2 s (torch itself comes with the method registry)
        from fedlora_cli.federation.engine import FederatedRun
        from fedlora_cli.federation.experiment import build_experiment
        from fedlora_cli.federation.run_dir import RunDir
        from fedlora_cli.report.plots import plot_run

        apply_threads(checked.recipe.federation.threads)
        experiment = build_experiment(checked.recipe, checked.train, checked.test, checked.client_indices, phase)
    if resume is None:
        _warn(client_warnings(checked), as_json)
        name = f"{checked.recipe.name}-{checked.recipe.method.name}"
        run_dir = RunDir.at(out) if out is not None else RunDir.create(checked.recipe.output.dir, name)
        run_dir.write_recipe(dump_recipe(checked.recipe))

    reporter = JsonLinesReporter() if as_json else LiveTableReporter(quiet=quiet)
    run = FederatedRun(experiment, run_dir, reporter)
    if resume is not None:
        run.resume()
    try:
        summary = run.run()
    except KeyboardInterrupt:
        reporter.stop()
        err_console().print(
            f"interrupted; the last checkpoint is saved. Resume with: fedlora train --resume {run_dir.path}",
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    plot_run(run_dir.path)
    if summary["stopped"]:
        raise typer.Exit(EXIT_BUDGET)
