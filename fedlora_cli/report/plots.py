"""PNG plots: a run's accuracy and epsilon per round, several runs compared, a partition heatmap.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no
global backend switch), so plotting works headless and inside other programs.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedlora_cli.errors import InputError
from fedlora_cli.federation.run_dir import RunDir, atomic_write_bytes, file_in_the_way

RUN_PLOT_FILE = "metrics.png"


def _series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [
        (m["round"], float(m[key]))
        for m in metrics
        if m.get(key) is not None and math.isfinite(float(m[key]))
    ]
    return [r for r, _ in points], [v for _, v in points]


def _save(figure: Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` in the format its extension names (InputError, naming the
    --png path, for an extension matplotlib cannot write or a file where a directory must be)."""
    path = Path(path)
    formats = FigureCanvasAgg(figure).get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in formats:
        raise InputError(f"--png {path}: cannot write a '{path.suffix}' image; end the name in one of .{', .'.join(sorted(formats))}")
    blocker = file_in_the_way(path.parent)
    if blocker is not None:
        raise InputError(f"--png {path}: {blocker} is a file, not a directory; choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    figure.savefig(image, format=path.suffix.lstrip(".").lower(), dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, image.getvalue())  # never through a symlink planted at path
    return path


def _rounds_figure(runs: list[tuple[str, list[dict]]], title: str) -> Figure:
    """Two panels sharing the round axis: test accuracy (top) and epsilon (bottom)."""
    figure = Figure(figsize=(7.5, 6.0))
    acc_ax, eps_ax = figure.subplots(2, 1, sharex=True)
    any_eps = False
    for label, metrics in runs:
        rounds, acc = _series(metrics, "eval_accuracy")
        acc_ax.plot(rounds, acc, marker="o", markersize=3, label=label)
        rounds, eps = _series(metrics, "epsilon")
        if eps:
            any_eps = True
            eps_ax.plot(rounds, eps, marker="o", markersize=3, label=label)
        else:
            eps_ax.plot([], [], label=f"{label} (no DP)")
    acc_ax.set_ylabel("test accuracy")
    acc_ax.set_title(title)
    acc_ax.grid(alpha=0.3)
    eps_ax.set_ylabel("epsilon (spent)")
    eps_ax.set_xlabel("round")
    eps_ax.grid(alpha=0.3)
    if not any_eps:
        eps_ax.text(0.5, 0.5, "no differential privacy", ha="center", va="center", transform=eps_ax.transAxes)
    if len(runs) > 1:
        acc_ax.legend(fontsize="small")
        if any_eps:
            eps_ax.legend(fontsize="small")
    all_rounds = [m["round"] for _, metrics in runs for m in metrics]
    if all_rounds and max(all_rounds) <= 20:
        eps_ax.set_xticks(range(1, max(all_rounds) + 1))
    figure.tight_layout()
    return figure


def plot_run(run_dir_path: str | Path, path: str | Path | None = None) -> Path | None:
    """Accuracy and epsilon per round of one run (``RUN_DIR/metrics.png`` by default).

    Reads ``RUN_DIR/metrics.jsonl``; returns the PNG's path, or None when no round finished.
    """
    run = RunDir(Path(run_dir_path))
    metrics = run.read_metrics()
    if not metrics:
        return None
    return _save(_rounds_figure([(run.path.name, metrics)], f"{run.path.name}"), Path(path) if path else run.path / RUN_PLOT_FILE)


def plot_runs(runs: list[tuple[str, list[dict]]], path: str | Path) -> Path:
    """Several runs' accuracy and epsilon per round on one figure (``fedlora compare``)."""
    return _save(_rounds_figure(runs, f"{len(runs)} runs"), Path(path))


def plot_partition(counts: np.ndarray, label_names: list[str], path: str | Path, title: str) -> Path:
    """A clients × labels heatmap of sample counts (numbers written in when the grid is small)."""
    counts = np.asarray(counts)
    clients, labels = counts.shape
    figure = Figure(figsize=(min(2.5 + 0.7 * labels, 16), min(1.5 + 0.35 * clients, 24)))
    ax = figure.subplots()
    image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=ax, label="samples")
    ax.set_xticks(range(labels))
    crowded = sum(len(str(n)) for n in label_names) > 6 * labels or labels > 8
    ax.set_xticklabels(label_names, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_yticks(range(clients))
    ax.set_yticklabels([f"{k} ({int(n)})" for k, n in enumerate(counts.sum(axis=1))])
    ax.set_xlabel("label")
    ax.set_ylabel("client (size)")
    ax.set_title(title)
    if clients * labels <= 400:
        threshold = counts.max() / 2 if counts.size else 0
        for k in range(clients):
            for j in range(labels):
                ax.text(j, k, str(int(counts[k, j])), ha="center", va="center", fontsize=7,
                        color="black" if counts[k, j] > threshold else "white")
    figure.tight_layout()
    return _save(figure, Path(path))


def plot_sweep(table: list[dict], path: str | Path, title: str) -> Path:
    """A sweep's final accuracy: bars (mean ± 95% CI) grouped by the grid's first axis, one
    colour per value of the other axes, and each seed's run as a dot on its bar.

    ``table`` rows are :func:`fedlora_cli.federation.sweep.summarize` rows; a cell label reads
    ``key=value, key=value`` (grid values cannot hold commas).
    """
    cells = [[part.partition("=") for part in row["cell"].split(", ")] for row in table]
    groups = list(dict.fromkeys(cell[0][2] for cell in cells))
    names = [", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, _, v in cell[1:]) for cell in cells]
    series = list(dict.fromkeys(names))
    width = 0.8 / len(series)
    figure = Figure(figsize=(max(6.0, 1.2 + len(table) * 0.45), 4.2))
    ax = figure.subplots()
    colors = [f"C{i % 10}" for i in range(len(series))]
    labelled = set()
    for row, cell, name in zip(table, cells, names):
        index = series.index(name)
        x = groups.index(cell[0][2]) + (index - (len(series) - 1) / 2) * width
        ax.bar(x, row["accuracy_mean"], width * 0.9, yerr=row["accuracy_ci95"], capsize=2, color=colors[index],
               alpha=0.75, label=name if name and name not in labelled else None)
        labelled.add(name)
        seeds = row["accuracy_per_seed"]
        ax.plot([x] * len(seeds), seeds, "o", color="black", markersize=2.5, alpha=0.7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlabel(cells[0][0][0] if cells else "")
    ax.set_ylabel("final test accuracy\n(mean ± 95% CI; dots: seeds)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    if any(series):
        ax.legend(fontsize="small", ncols=min(3, len(series)), loc="lower right")
    figure.tight_layout()
    return _save(figure, Path(path))
