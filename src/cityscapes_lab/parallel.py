"""Running independent tasks over the machine's cores with a progress bar.

Workers receive pickled tasks on one pipe and send results back on another (``cityscapes_lab.worker``). Not
``multiprocessing``, because each of its start methods breaks a promise of the toolkit: ``spawn`` and
``forkserver`` re-run the user's script in every worker (a plain script without an ``if __name__ == "__main__":``
guard crashes), ``fork`` is unsafe once other threads run (torch's OpenMP pool), and with none of them do the
workers notice that their parent was killed. Ours fork while that is safe (fast: nothing to import; OpenCV's
thread pool is stopped for the moment of the fork), and start fresh interpreters otherwise, which import just the
module of the task's function. Either way they ignore Ctrl-C (the parent stops them: ``stop_workers``) and exit
when the parent dies, even in the middle of a task.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .errors import LabError
from .interrupts import raise_if_interrupted
from .worker import receive, send, serve

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class WorkerDied(LabError):
    """A worker process ended without answering (killed, usually by the kernel for lack of memory)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as the ``__cause__`` of the re-raised one."""


def _can_fork() -> bool:
    """Whether a forked worker is safe: no other Python thread (it could hold a lock the child then waits on for
    ever; tqdm's monitor only sleeps) and no torch (its OpenMP thread pool does not survive a fork). The native
    threads of NumPy's BLAS are fork-aware."""
    from tqdm import TMonitor

    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not isinstance(t, TMonitor)]
    return hasattr(os, "fork") and "torch" not in sys.modules and not others


@contextlib.contextmanager
def _opencv_threads_stopped(fork: bool) -> Iterator[None]:
    """While forking, OpenCV's thread pool (native threads, once it ran a parallel operation) is shut down: a
    forked child would otherwise wait for ever on pool threads that it does not have."""
    cv2 = sys.modules.get("cv2") if fork else None
    if cv2 is None or not hasattr(cv2, "setNumThreads"):
        yield
        return
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # joins the pool's threads
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


class _Forked:
    """The part of ``subprocess.Popen`` the pool uses, for a forked child."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


@dataclass
class _Worker:
    process: subprocess.Popen | _Forked
    tasks: int  # our end of its task pipe
    results: int  # our end of its result pipe
    in_flight: collections.deque = dataclasses.field(default_factory=collections.deque)  # its tasks, oldest first


def _start_worker(siblings: list[_Worker], fork: bool, env: dict[str, str] | None = None) -> _Worker:
    task_read, task_write = os.pipe()
    result_read, result_write = os.pipe()
    parent = os.getpid()
    if fork:
        pid = os.fork()
        if pid == 0:  # the child: drop the pipe ends that are not its own, so that EOF means "parent done"
            code = 0
            try:
                for fd in [task_write, result_read] + [f for w in siblings for f in (w.tasks, w.results)]:
                    os.close(fd)
                serve(task_read, result_write, parent)
            except BaseException:  # noqa: BLE001 - never return into the parent's code
                code = 1
            os._exit(code)
        process = _Forked(pid)
    else:
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, **(env or {}),
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "cityscapes_lab.worker", str(task_read), str(result_write), str(parent)],
                pass_fds=(task_read, result_write), env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            for fd in (task_read, task_write, result_read, result_write):
                os.close(fd)
            raise
    os.close(task_read)
    os.close(result_write)
    return _Worker(process, task_write, result_read)


def stop_workers(workers: list[_Worker], grace: float = 5.0) -> None:
    """Stop workers in the middle of their tasks (after a Ctrl-C or an error): SIGTERM, so that each task unwinds and
    removes its temporary files (``worker.Stopped``), then SIGKILL for any still running after ``grace`` seconds
    (a task stuck in native code). A stopped training resumes from its last epoch checkpoint when run again."""
    for worker in workers:
        if worker.process.poll() is None:  # not reaped yet, so its pid is still its own
            os.kill(worker.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(w.process.poll() is None for w in workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    for worker in workers:
        worker.process.kill()  # only those still running


def close_workers(workers: list[_Worker], stop: list[_Worker]) -> None:
    """Close every worker's task pipe (an idle worker exits on its own), stop those in ``stop`` in the middle of
    their tasks (``stop_workers``), and wait for all of them."""
    for worker in workers:
        os.close(worker.tasks)
    stop_workers(stop)
    for worker in workers:
        worker.process.wait()
        os.close(worker.results)


def _death_message(worker: _Worker) -> str:
    code = worker.process.wait()
    how = f"was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exited with code {code}"
    hint = "; it probably ran out of memory" if code == -signal.SIGKILL else ""
    return (f"a worker process {how} while working{hint}; run the same command again to continue where it "
            "stopped (with fewer --workers if it happens again)")


class _Pool:
    """``size`` started workers, up to two tasks in flight on each (the next one waits in its pipe)."""

    def __init__(self, size: int):
        fork = _can_fork()
        self.workers: list[_Worker] = []
        with _opencv_threads_stopped(fork):
            try:
                for _ in range(size):
                    self.workers.append(_start_worker(self.workers, fork))
            except BaseException:
                self.stop(kill=True)
                raise

    def run(self, fn: Callable[[T], R], tasks: list[T]) -> Iterator[tuple[T, R]]:
        """Yield ``(task, fn(task))`` in completion order; the first error stops every worker and is raised."""
        queue = iter(tasks)

        def give(worker: _Worker) -> None:  # two tasks in flight: the next one waits in the pipe
            while len(worker.in_flight) < 2:
                task = next(queue, None)
                if task is None:
                    return
                worker.in_flight.append(task)
                send(worker.tasks, (fn, task))

        with selectors.DefaultSelector() as selector:
            for worker in self.workers:
                selector.register(worker.results, selectors.EVENT_READ, worker)
                give(worker)
            while any(worker.in_flight for worker in self.workers):
                for key, _ in selector.select():
                    worker = key.data
                    try:
                        status, payload, text = receive(worker.results)
                    except EOFError:
                        raise WorkerDied(_death_message(worker)) from None
                    task = worker.in_flight.popleft()
                    if status == "error":
                        raise payload from RemoteTraceback(text)
                    give(worker)
                    yield task, payload

    def stop(self, kill: bool) -> None:
        """Close the task pipes (idle workers exit on their own); ``kill`` also stops busy ones at once."""
        workers, self.workers = self.workers, []
        close_workers(workers, stop=workers if kill else [])


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

    With more than one worker the tasks run in worker processes (see the module's docstring), so ``fn`` must be
    a module-level function of an importable module, and tasks and results must pickle. The first exception
    stops the workers and is raised here (with the worker's traceback as its cause); a worker that dies raises
    WorkerDied. ``units`` tells how many progress units (images) a task covers.
    """
    from tqdm import tqdm

    tasks = list(tasks)
    # The pool starts before the bar: tqdm's monitor thread would rule out forking.
    pool = _Pool(min(workers, len(tasks))) if workers > 1 and len(tasks) > 1 else None
    results = pool.run(fn, tasks) if pool else ((task, fn(task)) for task in tasks)
    finished = False
    try:
        with tqdm(total=total_units if total_units is not None else sum(map(units, tasks)), desc=desc, unit=unit,
                  disable=None, dynamic_ncols=True) as bar:
            for task, result in results:
                bar.update(units(task))
                yield task, result
                raise_if_interrupted()  # after the caller has the result, so that none is lost
        finished = True
    finally:
        if pool:
            pool.stop(kill=not finished)
