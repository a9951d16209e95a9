"""Independent runs (a benchmark's seeds and settings) K at a time in separate processes, each with its share
of the cores.

One small run keeps neither a GPU nor two CPU cores busy: on the 2-core CPU this project is measured on, two
one-thread training runs side by side make 1.8x the steps per second of one two-thread run. Processes are
spawned (each loads its own model; a forked copy of a process holding torch state is unsafe), so the job
function and its arguments must be importable and picklable: a function at a script's top level is.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

from gfnlm.infra.errors import GfnlmError


def share_cores(threads: int) -> None:
    """This process's share of the cores, for torch here and for the subprocesses it starts (which read the
    environment): processes that each use every core slow one another down."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_jobs(function: Callable, arguments: Sequence[tuple], workers: int) -> Iterator:
    """``function(*a)`` for each ``a`` in ``arguments``, yielded in order as they finish in order; with
    ``workers`` > 1, that many run at a time in spawned processes with 1/workers of the cores each. The first
    failure is raised and cancels the jobs not yet started (those running finish first)."""
    if workers < 1:
        raise GfnlmError(f"workers must be at least 1, got {workers}")
    if workers == 1:
        for a in arguments:
            yield function(*a)
        return
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=share_cores, initargs=(threads,)) as pool:
        futures = [pool.submit(function, *a) for a in arguments]
        try:
            for future in futures:
                yield future.result()
        except BaseException:  # a failed job, or the caller stopped early: start no further ones
            pool.shutdown(wait=False, cancel_futures=True)
            raise
