"""Run a grid of recipes x seeds, one run directory each, and tabulate mean and 95% CI.

Example: `fedlora sweep recipes/sst2.yaml --grid method=fedavg,ffa,fedsvd --grid privacy.target_epsilon=none,6,3
--seeds 3 --out sweeps/sst2`.

Re-running the same command skips finished runs and resumes interrupted ones; more --seeds or a
sub-grid of the same recipe and overrides into the same --out reuse the runs already there.
`--workers 2` runs two runs at a time, each process on its share of the CPU cores (on 2 cores
about 1.5x the runs per hour of one process: small LoRA matrices do not keep two threads busy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from fedlora_cli.cli.common import guarded, wants_json
from fedlora_cli.errors import InputError, RunError
from fedlora_cli.recipe import dump_recipe, resolve_recipe_path
from fedlora_cli.report.console import NullReporter
from fedlora_cli.validate import check_recipe

WORKER_ENV = "FEDLORA_SWEEP_WORKER"


@guarded
def sweep(
    recipe: str = typer.Argument(..., help="recipe file or builtin name"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides for every run"),
    grid: list[str] = typer.Option(..., "--grid", help="key=v1,v2,... (repeatable); method= means method.name="),
    seeds: int = typer.Option(1, "--seeds", min=1, help="seeds 0..N-1 of federation.seed per cell"),
    out: Path = typer.Option(Path("sweeps/sweep"), "--out", help="sweep directory"),
    json_output: bool = typer.Option(False, "--json", help="one JSON object per finished run, then the table"),
    workers: int = typer.Option(1, "--workers", min=1, help="runs at a time, each process on cores/workers threads"),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="K/N: run only runs K, K+N, K+2N, ... of the plan (several processes or machines, one --out)"
    ),
) -> None:
    # torch, transformers and opacus load when the command runs, so `fedlora --help` is fast
    from fedlora_cli.federation.engine import FederatedRun
    from fedlora_cli.federation.experiment import build_experiment
    from fedlora_cli.federation.run_dir import RunDir
    from fedlora_cli.federation.sweep import SEED_KEY, cells, parse_grid, summarize, write_plan, write_tables
    from fedlora_cli.report.plots import plot_run, plot_sweep

    shard_index, shard_count = _parse_shard(shard)
    if workers > 1 and shard is not None:
        raise InputError("--workers starts its own shards; use either --workers or --shard")
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
    if workers > 1:
        grid_args = [arg for item in grid for arg in ("--grid", item)]
        json_args = ["--json"] if as_json else []
        _run_shards(workers, [recipe, *base, *grid_args, "--seeds", str(seeds), "--out", str(out), *json_args], out)
    rows = []
    pending = 0
    for index, ((cell, seed), checked) in enumerate(zip(plan, checked_runs), start=1):
        run_path = out / cell.run_name(seed)
        summary = RunDir(run_path).read_summary() if run_path.exists() else None
        mine = (index - 1) % shard_count == shard_index - 1
        if summary is None and not mine:
            pending += 1  # another shard's run, not finished yet
            continue
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
        if workers > 1 or not mine:
            continue  # reported by the worker process or shard that owns the run
        if as_json:
            print(json.dumps({"type": "run", **row}), flush=True)
        else:
            eps = "no DP" if summary["epsilon"] is None else f"epsilon {summary['epsilon']:.2f}"
            f1 = summary.get("final_macro_f1")  # None for causal_lm runs
            scores = f"accuracy {summary['final_accuracy']:.4f}" + ("" if f1 is None else f", macro-F1 {f1:.4f}")
            if summary.get("final_perplexity") is not None:
                scores += f", perplexity {summary['final_perplexity']:.3f}"
            console.print(
                f"[{index}/{len(plan)}] {cell.label}, seed {seed}: {scores}{', COLLAPSED' if summary.get('collapsed') else ''}, {eps}",
                markup=False,
                highlight=False,
            )
    if os.environ.get(WORKER_ENV):
        return  # a --workers child: the parent process tabulates
    if pending:
        message = (f"shard {shard}: done; {pending} runs of other shards are not finished yet. "
                   f"The table is written by the shard that finishes last, or re-run without --shard.")
        Console(stderr=True).print(message, markup=False, highlight=False, soft_wrap=True)
        return
    table = summarize(rows)
    write_tables(out, table)
    png = plot_sweep(table, out / "results.png", f"{out.name}: {len(seed_list)} seed(s) per cell")
    if as_json:
        print(json.dumps({"type": "table", "rows": table, "png": str(png)}))
    else:
        console.print((out / "results.md").read_text(encoding="utf-8"), markup=False, highlight=False)
        console.print(f"tables: {out / 'results.md'}, {out / 'results.csv'}; plot: {png}", markup=False)


def _parse_shard(shard: str | None) -> tuple[int, int]:
    if shard is None:
        return 1, 1
    try:
        index, count = (int(part) for part in shard.split("/"))
    except ValueError:
        index, count = 0, 0
    if not 1 <= index <= count:
        raise InputError(f"--shard '{shard}': expected K/N with 1 <= K <= N, e.g. --shard 1/2")
    return index, count


def _run_shards(workers: int, sweep_args: list[str], out: Path) -> None:
    """Run this same sweep as ``workers`` processes (``--shard k/workers``), sharing the cores."""
    env = dict(os.environ)
    env[WORKER_ENV] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    entry = "from fedlora_cli.cli import main; main()"
    children = [
        subprocess.Popen([sys.executable, "-c", entry, "sweep", *sweep_args, "--shard", f"{k}/{workers}"], env=env)
        for k in range(1, workers + 1)
    ]
    try:
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        for child in children:  # they got the Ctrl-C too, save their checkpoints and stop
            child.wait()
        raise
    if any(codes):
        raise RunError(f"sweep workers exited with codes {codes}; re-run the same command to resume ({out})")
