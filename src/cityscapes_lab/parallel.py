"""Running independent tasks over the machine's cores with a progress bar."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _keep_freed_memory() -> None:
    """Pool workers allocate and free the same large image buffers over and over; by default glibc hands each
    back to the system and page-faults it in again (about 10% of an evaluation's time). Keep them instead."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's largest; bigger blocks are rare
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: keep its defaults
        pass


def run_tasks(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    *,
    workers: int,
    desc: str,
    total_units: int | None = None,
    units: Callable[[T], int] = lambda task: 1,
    unit: str = "img",
) -> Iterator[tuple[T, R]]:
    """Run ``fn`` on every task, yielding ``(task, result)`` as each one finishes (in completion order).

    With more than one worker, tasks run in forked processes, or in fresh ``spawn`` processes once torch is
    loaded: forking a process whose OpenMP threads have started can deadlock. The first exception cancels the
    remaining tasks and is re-raised.
    ``units`` tells how many progress units (images) a task covers.
    """
    tasks = list(tasks)
    bar = tqdm(total=total_units if total_units is not None else sum(map(units, tasks)), desc=desc, unit=unit,
               disable=None, dynamic_ncols=True)
    with bar:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                result = fn(task)
                bar.update(units(task))
                yield task, result
            return
        context = multiprocessing.get_context("spawn" if "torch" in sys.modules else "fork")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context,
                                 initializer=_keep_freed_memory) as pool:
            # Keep a bounded number of tasks in flight so that results (which may be large) do not pile up.
            pending = {}
            queue = iter(tasks)
            try:
                for task in queue:
                    pending[pool.submit(fn, task)] = task
                    if len(pending) >= 2 * workers:
                        break
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        task = pending.pop(future)
                        result = future.result()
                        bar.update(units(task))
                        yield task, result
                        nxt = next(queue, None)
                        if nxt is not None:
                            pending[pool.submit(fn, nxt)] = nxt
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
