"""What every command shares: error handling, exit codes and output mode."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from pathlib import Path

import typer
from rich.console import Console

from fedlora_cli.errors import InputError, RunError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_BUDGET = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 success, 1 runtime failure, 2 bad input (recipe, file or flag), "
    "3 stopped at the privacy budget, 130 interrupted (Ctrl-C)."
)


def command_help(doc: str) -> str:
    """A command's ``--help`` text: its module docstring with each paragraph joined into one line
    (the terminal wraps it; the docstring's own line breaks would break lines mid-sentence), then
    the exit codes."""
    paragraphs = [" ".join(line.strip() for line in paragraph.splitlines()) for paragraph in doc.strip().split("\n\n")]
    return "\n\n".join([*paragraphs, EXIT_CODES_HELP])


def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def print_input_error(exc: InputError) -> None:
    console = err_console()
    head = f"error in {exc.source}" if exc.source else "error"
    if len(exc.problems) == 1:
        console.print(f"{head}: {exc.problems[0]}", markup=False, soft_wrap=True)
        return
    console.print(f"{head}: {len(exc.problems)} problems", markup=False, soft_wrap=True)
    for problem in exc.problems:
        console.print(f"  - {problem}", markup=False, soft_wrap=True)


def require_existing(path: Path | None, what: str) -> None:
    """InputError naming ``what`` (a flag or argument) and the absolute path looked for, when missing."""
    if path is not None and not path.exists():
        raise InputError(f"{what} {path}: not found (looked for {path.resolve()}); fix the path")


def require_writable_file(path: Path, what: str) -> None:
    """InputError naming ``what`` (a flag) when ``path`` cannot become a file: a directory, or a
    folder that does not exist (an existing file is replaced)."""
    if path.is_dir():
        raise InputError(f"{what} {path}: is a directory; give a file path, e.g. {path / 'predictions.jsonl'}")
    if not path.parent.is_dir():
        raise InputError(f"{what} {path}: the folder {path.parent.resolve()} does not exist; create it or choose another path")


def print_warnings(warnings: list[dict], prefix: str = "") -> None:
    """Data-report warnings (:mod:`fedlora_cli.data_report`), one ``warning:`` line each on stderr."""
    console = err_console()
    for warning in warnings:
        console.print(f"warning: {prefix}{warning['message']}", markup=False, soft_wrap=True)


def guarded(fn):
    """Run a command: library errors become messages and exit codes, never tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            print_input_error(exc)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except RunError as exc:
            err_console().print(f"error: {exc}", markup=False, soft_wrap=True)
            raise typer.Exit(EXIT_FAILURE) from None
        except KeyboardInterrupt:
            err_console().print("interrupted", markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place that turns crashes into exit 1
            if os.environ.get("FEDLORA_DEBUG"):
                traceback.print_exc()
            err_console().print(
                f"internal error: {type(exc).__name__}: {exc} (set FEDLORA_DEBUG=1 for the traceback)",
                markup=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_FAILURE) from None

    return wrapper


@contextlib.contextmanager
def progress(text: str, show: bool):
    """A spinner on stderr for a long step (or nothing, for --json and --quiet).

    Yields ``phase(text)``, which renames the step as it moves on (loading the model, tokenizing ...).
    """
    if not show:
        yield lambda _text: None
        return
    with err_console().status(text) as status:
        yield status.update


def wants_json(json_flag: bool) -> bool:
    """JSON output when asked, or when stdout is not a terminal."""
    return json_flag or not sys.stdout.isatty()
