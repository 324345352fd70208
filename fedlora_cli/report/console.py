"""Round-by-round reporting: a live Rich table on a terminal, JSON lines otherwise.

The Rich table goes to stdout and notes to stderr; with ``--json`` (or when stdout is not a
terminal) stdout carries only JSON objects, each with a ``"type"`` field: the recipe's
``"warning"`` objects before round 1 (printed by the CLI), one ``"round"`` object per round and a
final ``"summary"``; nothing decorative.
"""

from __future__ import annotations

import json
import math
import sys

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

SECURE_MODE_OFF_NOTE = "note: privacy.secure_mode is off: DP noise comes from torch's seeded PRNG (reproducible, not cryptographically secure)"


def privacy_line(info: dict) -> str:
    """One line on the run's privacy setting (empty without DP)."""
    privacy = info["privacy_level"]
    if privacy == "sample":
        return (
            f" (target epsilon {info['target_epsilon']}, delta {info['delta']}, "
            f"noise multipliers {info['noise_multipliers']})"
        )
    if privacy == "client":
        clip = "adaptive clip" if info["adaptive_clipping"] else "clip"
        return (
            f" (DP-FedAvg: target epsilon {info['target_epsilon']} per client participation, delta {info['delta']}, "
            f"noise multiplier {info['noise_multipliers'][0]}, {clip} {info['client_clip']:.4g}, uniform client weights; "
            f"{info['sampling_note']})"
        )
    return ""


COLUMNS = ("round", "clients", "train loss", "accuracy", "macro-F1", "epsilon", "up", "down", "agg s", "seconds")
# task causal_lm: held-out response loss and perplexity instead of macro-F1; accuracy is exact match or choice accuracy
CAUSAL_COLUMNS = ("round", "clients", "train loss", "eval loss", "perplexity", "accuracy", "epsilon", "up", "down", "agg s", "seconds")


def human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def _json_ready(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


class LiveTableReporter:
    """A Rich table that grows by one row per round, with a status line underneath."""

    def __init__(self, console: Console | None = None, err_console: Console | None = None, quiet: bool = False):
        self.console = console or Console()
        self.err = err_console or Console(stderr=True)
        self.quiet = quiet
        self.rows: list[dict] = []
        self.status = Text("")
        self.live: Live | None = None
        self.causal = False  # task causal_lm (told by run_started)

    def _table(self) -> Table:
        table = Table(title="fedlora rounds", title_justify="left")
        for column in CAUSAL_COLUMNS if self.causal else COLUMNS:
            table.add_column(column, justify="right")
        for m in self.rows:
            scores = (
                [_fmt(m["eval_loss"]), _fmt(m.get("eval_perplexity"), 2), _fmt(m["eval_accuracy"])]
                if self.causal
                else [_fmt(m["eval_accuracy"]), _fmt(m.get("eval_macro_f1"))]
            )
            table.add_row(
                str(m["round"]),
                ",".join(str(c) for c in m["clients"]),
                _fmt(m["train_loss"]),
                *scores,
                _fmt(m["epsilon"], 3),
                human_bytes(m["bytes_up"]),
                human_bytes(m["bytes_down"]),
                _fmt(m["aggregation_seconds"], 3),
                _fmt(m["seconds"], 1),
            )
        return table

    def _render(self):
        return Group(self._table(), self.status)

    def run_started(self, info: dict) -> None:
        self.causal = info.get("task") == "causal_lm"
        if not self.quiet:
            privacy = info["privacy_level"]
            line = f"run {info['run_dir']}: {info['method']} on {info['model']}, {info['clients']} clients {info['client_sizes']}, {info['rounds']} rounds, {info['precision']}, privacy {privacy}"
            line += privacy_line(info)
            if privacy != "none" and not info["secure_mode"]:
                line += "; secure_mode off (noise from torch's PRNG)"
            if info["resumed_at_round"]:
                line += f"; resuming after round {info['resumed_at_round']}"
            self.console.print(line, markup=False, highlight=False)
        self.live = Live(self._render(), console=self.console, auto_refresh=False, transient=False)
        self.live.start()

    def round_started(self, round_number: int, clients: list[int]) -> None:
        self.status = Text(f"round {round_number}: training clients {clients} ...", style="dim")
        self._refresh()

    def round_finished(self, metrics: dict) -> None:
        self.rows.append(metrics)
        self.status = Text("")
        self._refresh()

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render(), refresh=True)

    def note(self, text: str) -> None:
        self.err.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def run_finished(self, summary: dict) -> None:
        self.stop()
        if self.quiet:
            return
        eps = summary["epsilon"]
        scope = "per client participation" if summary["privacy_level"] == "client" else "worst client"
        privacy = f"epsilon {eps:.3f} ({scope}), delta {summary['delta']}" if eps is not None else "no DP"
        self.console.print(
            f"{final_scores_line(summary)}, {privacy}, "
            f"{human_bytes(summary['bytes_up_total'])} up / {human_bytes(summary['bytes_down_total'])} down, "
            f"{summary['wall_seconds']:.0f} s",
            markup=False,
            highlight=False,
        )
        if summary["stopped"]:
            self.console.print(summary["stopped"], markup=False, highlight=False)
        self.console.print(f"run directory: {summary['run_dir']}", markup=False, highlight=False)


def final_scores_line(summary: dict) -> str:
    """The final scores: accuracy beside the majority class, or (causal_lm) loss, perplexity and accuracy."""
    if "final_perplexity" not in summary:
        auc = summary.get("final_auc")  # None: one class in the test split
        return (
            f"final accuracy {summary['final_accuracy']:.4f} (macro-F1 {summary['final_macro_f1']:.4f}"
            f"{'' if auc is None else f', ROC-AUC {auc:.4f}'}; majority class {summary['majority_accuracy']:.4f})"
        )
    line = f"final held-out loss {summary['final_loss']:.4f} (perplexity {summary['final_perplexity']:.2f})"
    if "final_choice_accuracy" in summary:
        line += f", choice accuracy {summary['final_choice_accuracy']:.4f}"
    if "final_exact_match" in summary:
        line += f", exact match {summary['final_exact_match']:.4f} on {summary['final_generated']} generated answers"
    return line


class JsonLinesReporter:
    """One JSON object per round on stdout; notes on stderr."""

    def __init__(self, stream=None, err=None):
        self.stream = stream or sys.stdout
        self.err = err or sys.stderr

    def _emit(self, kind: str, payload: dict) -> None:
        self.stream.write(json.dumps({"type": kind, **_json_ready(payload)}) + "\n")
        self.stream.flush()

    def run_started(self, info: dict) -> None:
        if info["privacy_level"] != "none" and not info.get("secure_mode", False):
            print(SECURE_MODE_OFF_NOTE, file=self.err)

    def round_started(self, round_number: int, clients: list[int]) -> None:
        pass

    def round_finished(self, metrics: dict) -> None:
        self._emit("round", metrics)

    def note(self, text: str) -> None:
        print(text, file=self.err)

    def stop(self) -> None:
        pass

    def run_finished(self, summary: dict) -> None:
        self._emit("summary", summary)


class NullReporter:
    """Reports nothing (runs inside a sweep, which prints one line per run itself)."""

    def run_started(self, info: dict) -> None:
        pass

    def round_started(self, round_number: int, clients: list[int]) -> None:
        pass

    def round_finished(self, metrics: dict) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass

    def run_finished(self, summary: dict) -> None:
        pass
