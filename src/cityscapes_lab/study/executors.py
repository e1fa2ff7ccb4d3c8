"""Where the study's tasks run: ``serial`` (in this process, one after another), ``local`` (N worker processes on
this machine) or ``ray`` (Ray core tasks on a cluster, an optional extra). Each has ``slots`` (tasks at once),
``submit(task) -> handle`` and ``wait() -> (handle, result, error)`` for the next task to finish, and
``task_threads(requested)``: the torch threads of each task, so that tasks at once never oversubscribe a machine
(``train.threads`` when set; it stays fixed, because on the CPU the thread count changes the numbers)."""

from __future__ import annotations

import collections
import os
import selectors
import signal
import threading
from typing import Any

from ..errors import ConfigError
from .graph import perform

EXECUTORS = ("serial", "local", "ray")


class SerialExecutor:
    """Each task runs in this process when it is submitted (the default)."""

    slots = 1

    def task_threads(self, requested: int) -> int:
        return requested  # 0: all of this machine's cores

    def __init__(self):
        self._done: collections.deque = collections.deque()
        self._count = 0

    def submit(self, task: Any) -> int:
        self._count += 1
        try:
            self._done.append((self._count, perform(task), None))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a failed task is recorded, the study goes on
            self._done.append((self._count, None, exc))
        return self._count

    def wait(self) -> tuple[int, Any, BaseException | None]:
        return self._done.popleft()

    def close(self) -> None:
        pass


class LocalExecutor:
    """``parallel`` worker processes of this machine (fresh interpreters that import only cityscapes-lab, and exit
    with the driver), one task each at a time; on one GPU each takes 1/``parallel`` of its memory, over several
    (``gpus``) they take turns (``runtime.worker_environments``)."""

    def __init__(self, parallel: int, gpus: tuple[str, ...] = ()):
        from ..engine.runtime import worker_environments
        from ..parallel import _start_worker

        self.slots = parallel
        self._workers = []
        for env in worker_environments(parallel, list(gpus)):
            self._workers.append(_start_worker(self._workers, fork=False, env=env))
        self._idle = list(self._workers)
        self._selector = selectors.DefaultSelector()
        self._count = 0

    def task_threads(self, requested: int) -> int:
        from ..parallel import default_workers

        return requested or max(1, default_workers() // self.slots)  # the processes split this machine's cores

    def submit(self, task: Any) -> int:
        from ..worker import send

        worker = self._idle.pop()
        self._count += 1
        worker.in_flight.append(self._count)
        send(worker.tasks, (perform, task))
        self._selector.register(worker.results, selectors.EVENT_READ, worker)
        return self._count

    def wait(self) -> tuple[int, Any, BaseException | None]:
        from ..parallel import WorkerDied, _death_message
        from ..worker import receive

        key, _ = self._selector.select()[0]
        worker = key.data
        self._selector.unregister(worker.results)
        handle = worker.in_flight.popleft()
        try:
            status, payload, _text = receive(worker.results)
        except EOFError:
            raise WorkerDied(_death_message(worker)) from None
        self._idle.append(worker)
        return (handle, payload, None) if status == "ok" else (handle, None, payload)

    def close(self) -> None:
        """Idle workers exit when their task pipe closes; busy ones (a study stopped by Ctrl-C or an error) are
        stopped, rather than waited for to the end of their trainings."""
        from ..parallel import close_workers

        self._selector.close()
        close_workers(self._workers, stop=[worker for worker in self._workers if worker.in_flight])


class RayExecutor:
    """Ray core tasks: on the cluster at ``address`` (``auto``: the one this machine belongs to), on the Ray
    instance this process already started, or on a local one started for the call (listening on 127.0.0.1).
    A task whose worker dies is run again by Ray (it resumes from its last epoch checkpoint)."""

    def __init__(self, address: str | None, cpus_per_task: float, gpus_per_task: float, retries: int = 3):
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'cityscapes-lab[ray]'") from None
        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                start_local_ray(num_cpus=os.cpu_count())
                self._started = True
        total = ray.cluster_resources()
        by_cpu = int(total.get("CPU", 1) // cpus_per_task) if cpus_per_task else 10_000
        by_gpu = int(total.get("GPU", 0) // gpus_per_task) if gpus_per_task else 10_000
        self.slots = max(1, min(by_cpu, by_gpu))
        self._remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task,
                                  max_retries=retries)(_perform_on_gpu_share)
        self.gpu_share = gpus_per_task if 0 < gpus_per_task < 1 else 1.0
        self._refs: set = set()  # the tasks submitted and not yet waited for
        self.cpus_per_task = cpus_per_task

    def task_threads(self, requested: int) -> int:
        # the CPUs Ray reserved for the task, whatever the node: threads=0 there would take all the node's cores
        # while Ray runs other tasks beside it
        return requested or max(1, int(self.cpus_per_task))

    def submit(self, task: Any) -> Any:
        ref = self._remote.remote(task, self.gpu_share)
        self._refs.add(ref)
        return ref

    def wait(self) -> tuple[Any, Any, BaseException | None]:
        ready, _ = self.ray.wait(list(self._refs), num_returns=1)
        ref = ready[0]
        self._refs.discard(ref)
        try:
            return ref, self.ray.get(ref), None
        except self.ray.exceptions.RayTaskError as exc:
            return ref, None, exc.cause if exc.cause is not None else exc
        except self.ray.exceptions.RayError as exc:  # the worker died more often than it may be retried
            return ref, None, exc

    def close(self) -> None:
        """Tasks still running (a study stopped by Ctrl-C or an error) are cancelled, not left to run on in a Ray
        instance that outlives this call: KeyboardInterrupt in each, so that it unwinds, then a forced cancel of
        any still running after 5 s."""
        if self._refs:
            refs, self._refs = list(self._refs), set()
            for ref in refs:
                self.ray.cancel(ref)
            _, running = self.ray.wait(refs, num_returns=len(refs), timeout=5.0)
            for ref in running:
                self.ray.cancel(ref, force=True)
        if self._started:
            self.ray.shutdown()


def start_local_ray(num_cpus: int | None = None, num_gpus: float | None = None) -> None:
    """Start a Ray instance on this machine alone, every one of its servers listening on 127.0.0.1 only.

    ``ray.init(_node_ip_address="127.0.0.1")`` is not enough on Linux (Ray 2.60): Ray replaces a loopback node
    address by the machine's own, and its gRPC servers (GCS, raylet, workers) then listen on every interface.
    Ray's one-machine mode, its default on macOS and Windows, keeps the node address, and so every server, on
    loopback; it is chosen by a constant read when the node starts, set here for that moment only.
    ``tests/study/test_executors.py`` checks the listening sockets, so a Ray upgrade that changes this fails
    there."""
    import ray
    from ray._private import ray_constants

    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


def _perform_on_gpu_share(task: Any, share: float) -> Any:
    """A Ray task: ``perform`` with the process's GPU share set to the GPUs Ray reserved for it (set on every task,
    as Ray reuses its worker processes)."""
    from ..engine.runtime import GPU_SHARE_ENV

    _cancellable()
    os.environ[GPU_SHARE_ENV] = str(share)
    return perform(task)


def _cancellable() -> None:
    """Let Ray's cancel reach this task. It raises KeyboardInterrupt in the task, which Python does only where
    SIGINT has a handler; workers of a Ray started from a background job (``nohup``, a batch system, CI) inherit
    SIGINT ignored, and their tasks could then only be killed, leaving their temporary files behind."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def make_executor(name: str, parallel: int = 1, ray_address: str | None = None, cpus_per_task: float = 1.0,
                  gpus_per_task: float = 0.0, gpus: tuple[str, ...] = ()):
    if name == "serial":
        return SerialExecutor()
    if name == "local":
        if parallel < 1:
            raise ConfigError(f"--parallel {parallel}: must be at least 1")
        return LocalExecutor(parallel, gpus)
    if name == "ray":
        return RayExecutor(ray_address, cpus_per_task, gpus_per_task)
    raise ConfigError(f"--executor {name!r}: choose one of {', '.join(EXECUTORS)}")
