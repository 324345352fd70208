"""Exceptions raised by library code; the CLI maps them to exit codes.

Exit codes: 0 success, 1 runtime failure, 2 bad input (:class:`InputError`),
3 stopped at the privacy budget (:class:`BudgetExhausted` is reported, not raised),
130 interrupted by the user.
"""

from __future__ import annotations


class FedloraError(Exception):
    """Base class of every error fedlora raises on purpose."""


class InputError(FedloraError):
    """Bad input from the user (recipe, file, flag). Carries every problem found at once."""

    def __init__(self, problems: list[str] | str, *, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(self.problems))


class RunError(FedloraError):
    """A run failed for a reason that is not the user's input."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), to quote
    a library's error inside fedlora's own one-line message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
