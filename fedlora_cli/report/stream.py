"""Reporting across a process boundary: a run's events as JSON lines, and reading them back.

The Flower ServerApp runs in a process of the SuperLink, and what it writes to stdout reaches
the user through Flower's log stream (``flwr run --stream``). :class:`EventStreamReporter`
writes every reporter event as one JSON object on its own line (``"type"``: ``run``,
``round_started``, ``round``, ``note``, ``summary``, and ``error`` when the run fails on
purpose: an input or run error with its problems); :func:`parse_event` finds these objects in
the streamed log lines, and :func:`replay` hands them to an ordinary reporter (the live table or
``--json`` lines) on the user's side.
"""

from __future__ import annotations

import json
import sys

from fedlora_cli.report.console import _json_ready

EVENT_TYPES = ("run", "round_started", "round", "note", "summary", "error")


class EventStreamReporter:
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def _emit(self, kind: str, payload: dict) -> None:
        self.stream.write(json.dumps({"type": kind, **_json_ready(payload)}) + "\n")
        self.stream.flush()

    def run_started(self, info: dict) -> None:
        self._emit("run", info)

    def round_started(self, round_number: int, clients: list[int]) -> None:
        self._emit("round_started", {"round": round_number, "clients": clients})

    def round_finished(self, metrics: dict) -> None:
        self._emit("round", metrics)

    def note(self, text: str) -> None:
        self._emit("note", {"text": text})

    def stop(self) -> None:
        pass

    def run_finished(self, summary: dict) -> None:
        self._emit("summary", summary)

    def error(self, exc: Exception) -> None:
        """A fedlora error that ends the run (``kind`` input or run), for the submitting side to raise."""
        from fedlora_cli.errors import InputError

        if isinstance(exc, InputError):
            self._emit("error", {"kind": "input", "problems": exc.problems, "source": exc.source})
        else:
            self._emit("error", {"kind": "run", "problems": [str(exc)], "source": None})


def parse_event(line: str) -> dict | None:
    """The event object in one log line (Flower may prefix it), or None."""
    start = line.find('{"type": ')
    if start < 0:
        return None
    try:
        event = json.loads(line[start:].strip())
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and event.get("type") in EVENT_TYPES else None


def replay(event: dict, reporter) -> None:
    """Call the reporter method that produced ``event`` (``error`` events are the caller's to raise)."""
    kind = event["type"]
    payload = {k: v for k, v in event.items() if k != "type"}
    if kind == "run":
        reporter.run_started(payload)
    elif kind == "round_started":
        reporter.round_started(payload["round"], payload["clients"])
    elif kind == "round":
        reporter.round_finished(payload)
    elif kind == "note":
        reporter.note(payload["text"])
    elif kind == "summary":
        reporter.run_finished(payload)
