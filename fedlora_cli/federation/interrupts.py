"""Holding Ctrl-C back while a round is committed, so a checkpoint is never half a round."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A SIGINT that arrives during the block is re-raised (to the handler that was in place,
    normally KeyboardInterrupt) only when the block ends. Python runs signal handlers in the
    main thread only, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)
