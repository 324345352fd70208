"""How many CPU threads torch uses for a run.

``federation.threads`` when the recipe sets it; else ``OMP_NUM_THREADS`` when it is a positive
integer (what `fedlora sweep --workers N` sets to divide the cores between its processes);
else the cores this process may run on (``os.sched_getaffinity``, which honours ``taskset`` and
container CPU sets, unlike ``os.cpu_count``). Small LoRA matrices gain little from many threads,
and threads that wait for cores busy with other processes slow a round down many times over.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_count(configured: int | None) -> int:
    """``configured``, else a positive ``OMP_NUM_THREADS``, else :func:`available_cores`."""
    if configured is not None:
        return configured
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cores()


def apply_threads(configured: int | None) -> int:
    """Set torch's intra-op thread count (:func:`thread_count`) and return it."""
    import torch

    count = thread_count(configured)
    torch.set_num_threads(count)
    return count
