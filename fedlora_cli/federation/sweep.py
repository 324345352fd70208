"""Grids of runs: every combination of override values × seeds, one run directory each.

``--grid method.name=fedavg,ffa --grid privacy.target_epsilon=none,6 --seeds 3`` gives
2 × 2 × 3 runs. ``privacy.target_epsilon=none`` means no DP (``privacy.level=none``).
A sweep directory holds ``sweep.json`` (the plan) and one run directory per cell and seed;
re-running the same command skips finished runs and resumes interrupted ones. A run is known by
its cell and seed, so a later sweep of the same recipe and overrides into the same directory
with more seeds or a sub-grid reuses every run it shares with the earlier one.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from fedlora_cli.errors import InputError
from fedlora_cli.federation.run_dir import atomic_write_text

GRID_ALIASES = {"method": "method.name"}
SEED_KEY = "federation.seed"


@dataclass(frozen=True)
class Cell:
    """One grid point: an ordered tuple of (dotted key, value string)."""

    settings: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.settings)

    def overrides(self) -> list[str]:
        result = []
        for key, value in self.settings:
            if key == "privacy.target_epsilon" and value.lower() in {"none", "null", "off"}:
                result.append("privacy.level=none")
            else:
                result.append(f"{key}={value}")
        return result

    def slug(self) -> str:
        return "_".join(f"{key}-{value}" for key, value in self.settings).replace("/", "-")

    def run_name(self, seed: int) -> str:
        """The run directory of this cell and seed inside a sweep directory."""
        return f"{self.slug()}_seed-{seed}"


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        key = GRID_ALIASES.get(key.strip(), key.strip())
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not choices:
            raise InputError(f"--grid '{item}': expected key=v1,v2,... e.g. --grid method=fedavg,fedsvd")
        axes.append((key, choices))
    return axes


def cells(axes: list[tuple[str, list[str]]]) -> list[Cell]:
    keys = [key for key, _ in axes]
    return [Cell(tuple(zip(keys, combo))) for combo in itertools.product(*(values for _, values in axes))]


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t confidence interval (0 for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    from scipy.stats import t as student_t

    t = float(student_t.ppf(0.975, len(values) - 1))
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def write_plan(sweep_dir: Path, recipe: str, axes, seeds: list[int], base_overrides: list[str]) -> None:
    """Record the plan; a directory holding runs of another recipe or other overrides is refused."""
    plan = json.loads(json.dumps({"recipe": recipe, "grid": axes, "seeds": seeds, "overrides": base_overrides}))
    path = sweep_dir / "sweep.json"
    if path.exists():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if (existing["recipe"], existing["overrides"]) != (plan["recipe"], plan["overrides"]):
            raise InputError(
                f"{sweep_dir} holds runs of recipe {existing['recipe']} with overrides {existing['overrides']}; "
                "use another --out"
            )
        if existing == plan:
            return
    atomic_write_text(path, json.dumps(plan, indent=2))


def summarize(rows: list[dict]) -> list[dict]:
    """Per cell: mean and 95% CI of final accuracy and epsilon over seeds."""
    by_cell: dict[str, list[dict]] = {}
    for row in rows:
        by_cell.setdefault(row["cell"], []).append(row)
    table = []
    for cell, runs in by_cell.items():
        accuracy, half = mean_ci95([r["final_accuracy"] for r in runs])
        f1s = [r["final_macro_f1"] for r in runs if r.get("final_macro_f1") is not None]
        f1, f1_half = mean_ci95(f1s) if f1s else (None, None)
        epsilons = [r["epsilon"] for r in runs if r["epsilon"] is not None]
        table.append(
            {
                "cell": cell,
                "seeds": len(runs),
                "accuracy_mean": accuracy,
                "accuracy_ci95": half,
                "accuracy_per_seed": [r["final_accuracy"] for r in sorted(runs, key=lambda r: r["seed"])],
                "macro_f1_mean": f1,
                "macro_f1_ci95": f1_half,
                "collapsed": sum(bool(r.get("collapsed")) for r in runs),
                "epsilon_max": max(epsilons) if epsilons else None,
                "bytes_up_mean": statistics.fmean(r["bytes_up_total"] for r in runs),
                "wall_seconds_mean": statistics.fmean(r["wall_seconds"] for r in runs),
            }
        )
    return table


def write_tables(sweep_dir: Path, table: list[dict]) -> None:
    header = ["cell", "seeds", "accuracy_mean", "accuracy_ci95", "accuracy_per_seed", "macro_f1_mean", "macro_f1_ci95",
              "collapsed", "epsilon_max", "bytes_up_mean", "wall_seconds_mean"]
    quoted = {"cell", "accuracy_per_seed"}
    csv_lines = [",".join(header)]
    md = [
        "| cell | seeds | accuracy (mean ± 95% CI) | accuracy per seed | macro-F1 (mean ± 95% CI) | collapsed runs "
        "| epsilon (max) | bytes up / run | seconds / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        row = {**row, "accuracy_per_seed": " ".join(f"{a:.4f}" for a in row["accuracy_per_seed"])}
        csv_lines.append(",".join(f'"{row[h]}"' if h in quoted else str(row[h]) for h in header))
        eps = "no DP" if row["epsilon_max"] is None else f"{row['epsilon_max']:.2f}"
        f1 = "n/a" if row["macro_f1_mean"] is None else f"{row['macro_f1_mean']:.4f} ± {row['macro_f1_ci95']:.4f}"
        md.append(
            f"| {row['cell']} | {row['seeds']} | {row['accuracy_mean']:.4f} ± {row['accuracy_ci95']:.4f} "
            f"| {row['accuracy_per_seed']} | {f1} | {row['collapsed']}/{row['seeds']} | {eps} | {row['bytes_up_mean'] / 1e6:.2f} MB | {row['wall_seconds_mean']:.0f} |"
        )
    atomic_write_text(sweep_dir / "results.csv", "\n".join(csv_lines) + "\n")
    atomic_write_text(sweep_dir / "results.md", "\n".join(md) + "\n")
