"""Paired method differences in a finished ``fedlora sweep`` directory.

Runs of one seed share the partition, the clients sampled in every round and the initial
adapter, so the per-seed difference ``acc(a) − acc(b)`` of two values of one grid axis removes
most of the between-seed variance that makes the per-cell confidence intervals wide. For each
setting of the other axes and each pair of values of ``--axis``, this prints the mean paired
difference with its 95% Student-t interval and how many seeds ``a`` won, tied and lost.

    python benchmarks/sweep_paired.py sweeps/sst2 --axis method.name
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from fedlora_cli.federation.run_dir import RunDir
from fedlora_cli.federation.sweep import cells, mean_ci95


def final_accuracies(sweep_dir: Path) -> dict[tuple[tuple[str, str], ...], dict[int, float]]:
    """{cell settings: {seed: final accuracy}} for every finished run of the plan in sweep.json."""
    plan = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8"))
    result = {}
    for cell in cells([(key, values) for key, values in plan["grid"]]):
        by_seed = {}
        for seed in plan["seeds"]:
            summary = RunDir(sweep_dir / cell.run_name(seed)).read_summary()
            if summary is not None:
                by_seed[seed] = summary["final_accuracy"]
        result[cell.settings] = by_seed
    return result


def paired_rows(accuracies, axis: str) -> list[str]:
    rows = []
    groups: dict[tuple, dict[str, dict[int, float]]] = {}
    for settings, by_seed in accuracies.items():
        others = tuple((k, v) for k, v in settings if k != axis)
        value = dict(settings)[axis]
        groups.setdefault(others, {})[value] = by_seed
    for others, by_value in groups.items():
        label = ", ".join(f"{k}={v}" for k, v in others) or "-"
        for a, b in itertools.combinations(by_value, 2):
            seeds = sorted(set(by_value[a]) & set(by_value[b]))
            if not seeds:
                continue
            diffs = [by_value[a][s] - by_value[b][s] for s in seeds]
            mean, half = mean_ci95(diffs)
            wins = sum(d > 0 for d in diffs)
            ties = sum(d == 0 for d in diffs)
            rows.append(f"| {label} | {a} − {b} | {len(seeds)} | {mean:+.4f} ± {half:.4f} | "
                        f"{wins}/{ties}/{len(seeds) - wins - ties} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--axis", default="method.name", help="the grid axis whose values are compared")
    args = parser.parse_args()
    print("| other settings | difference | seeds | mean ± 95% CI | a won / tied / lost |")
    print("|---|---|---|---|---|")
    print("\n".join(paired_rows(final_accuracies(args.sweep_dir), args.axis)))


if __name__ == "__main__":
    main()
