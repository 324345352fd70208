"""Run a grid of recipes x seeds, one run directory each, and tabulate mean and 95% CI.

Example: fedlora sweep recipes/sst2.yaml --grid method=fedavg,ffa,fedsvd
--grid privacy.target_epsilon=none,6,3 --seeds 3 --out sweeps/sst2
Re-running the same command skips finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from fedlora_cli.cli.common import guarded, wants_json
from fedlora_cli.errors import InputError
from fedlora_cli.recipe import dump_recipe, resolve_recipe_path
from fedlora_cli.report.console import NullReporter
from fedlora_cli.validate import check_recipe


@guarded
def sweep(
    recipe: str = typer.Argument(..., help="recipe file or builtin name"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides for every run"),
    grid: list[str] = typer.Option(..., "--grid", help="key=v1,v2,... (repeatable); method= means method.name="),
    seeds: int = typer.Option(1, "--seeds", min=1, help="seeds 0..N-1 of federation.seed per cell"),
    out: Path = typer.Option(Path("sweeps/sweep"), "--out", help="sweep directory"),
    json_output: bool = typer.Option(False, "--json", help="one JSON object per finished run, then the table"),
) -> None:
    # torch, transformers and opacus load when the command runs, so `fedlora --help` is fast
    from fedlora_cli.federation.engine import FederatedRun
    from fedlora_cli.federation.experiment import build_experiment
    from fedlora_cli.federation.run_dir import RunDir
    from fedlora_cli.federation.sweep import SEED_KEY, cells, parse_grid, plot_table, summarize, write_plan, write_tables
    from fedlora_cli.report.plots import plot_run

    axes = parse_grid(grid)
    base = list(overrides or [])
    seed_list = list(range(seeds))
    plan = [(cell, seed) for cell in cells(axes) for seed in seed_list]
    checked_runs = []
    problems = []
    for cell, seed in plan:  # validate every run before the first one starts
        try:
            checked_runs.append(check_recipe(recipe, base + cell.overrides() + [f"{SEED_KEY}={seed}"]))
        except InputError as exc:
            problems += [f"[{cell.label}, seed {seed}] {p}" for p in exc.problems]
    if problems:
        raise InputError(sorted(set(problems)), source=str(resolve_recipe_path(recipe)))
    out.mkdir(parents=True, exist_ok=True)
    write_plan(out, recipe, axes, seed_list, base)
    as_json = wants_json(json_output)
    console = Console()
    rows = []
    for index, ((cell, seed), checked) in enumerate(zip(plan, checked_runs), start=1):
        run_path = out / f"{cell.slug()}_seed-{seed}"
        summary = RunDir(run_path).read_summary() if run_path.exists() else None
        if summary is None:
            resuming = (run_path / "recipe.yaml").exists()
            run_dir = RunDir(run_path) if resuming else RunDir.at(run_path)
            if not resuming:
                run_dir.write_recipe(dump_recipe(checked.recipe))
            experiment = build_experiment(checked.recipe, checked.train, checked.test, checked.client_indices)
            run = FederatedRun(experiment, run_dir, NullReporter())
            if resuming:
                run.resume()
            summary = run.run()
            plot_run(run_path)
        row = {"cell": cell.label, "seed": seed, **summary}
        rows.append(row)
        if as_json:
            print(json.dumps({"type": "run", **row}), flush=True)
        else:
            eps = "no DP" if summary["epsilon"] is None else f"epsilon {summary['epsilon']:.2f}"
            console.print(
                f"[{index}/{len(plan)}] {cell.label}, seed {seed}: accuracy {summary['final_accuracy']:.4f}, {eps}",
                markup=False,
                highlight=False,
            )
    table = summarize(rows)
    write_tables(out, table)
    png = plot_table(out, table)
    if as_json:
        print(json.dumps({"type": "table", "rows": table, "png": str(png)}))
    else:
        console.print((out / "results.md").read_text(encoding="utf-8"), markup=False, highlight=False)
        console.print(f"tables: {out / 'results.md'}, {out / 'results.csv'}; plot: {png}", markup=False)
