"""The worker side of ``parallel.run_tasks``, and the wire format both sides speak (length-prefixed pickles).

A worker reads ``(function, task)`` pairs from its task pipe, runs them, and writes ``(status, result or
exception, traceback text)`` to its result pipe, until the parent closes the task pipe. It ignores Ctrl-C (the
parent decides what stops), stops when the parent sends SIGTERM (the task unwinds first, so that its temporary
files are removed) and exits as soon as its parent dies. Started fresh, as
``python -m cityscapes_lab.worker TASK_FD RESULT_FD PARENT_PID``, it never imports the parent's ``__main__``.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import struct
import sys
import threading
import time
import traceback

from .memory import keep_freed_memory

_LENGTH = struct.Struct("<Q")


def send(fd: int, obj: object) -> None:
    """Write one object to a pipe (pickled whole first, so a failure writes nothing)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd: int) -> object:
    """The next object on a pipe; EOFError when the other side has closed it."""
    head = _read_exactly(fd, _LENGTH.size)
    body = None if head is None else _read_exactly(fd, _LENGTH.unpack(head)[0])
    if body is None:
        raise EOFError
    return pickle.loads(body)


def pack_error(exc: BaseException) -> tuple[BaseException, str]:
    """An exception as it travels back: itself if it pickles (else a RuntimeError with its text), and its
    traceback as text."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - anything that does not survive the trip
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc, text


class Stopped(BaseException):
    """The parent stops this worker (SIGTERM): raised in the running task, which unwinds, and the worker exits."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped


def _die_with(parent: int) -> None:
    """Exit as soon as the parent is gone: at once on Linux (the kernel's parent-death signal), else within a
    second (a watchdog thread). An idle worker also sees its task pipe close."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def serve(task_fd: int, result_fd: int, parent: int) -> None:
    """The worker's loop; returns when the parent closes the task pipe. A reader thread keeps the task pipe
    drained, so that the parent never blocks on it while this worker blocks on sending a large result."""
    import queue

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent decides
    signal.signal(signal.SIGTERM, _stop)
    _die_with(parent)
    keep_freed_memory()  # workers allocate and free the same large image buffers over and over
    tasks: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        while True:
            try:
                tasks.put(("task", receive(task_fd)))
            except EOFError:
                tasks.put(("end", None))
                return
            except BaseException as exc:  # noqa: BLE001 - e.g. the task's module does not import here
                tasks.put(("error", exc))

    threading.Thread(target=read, daemon=True, name="task-reader").start()
    try:
        while True:
            kind, item = tasks.get()
            if kind == "end":
                return
            try:
                if kind == "error":
                    raise item
                fn, task = item
                send(result_fd, ("ok", fn(task), ""))
            except Stopped:
                raise
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
                send(result_fd, ("error", *pack_error(exc)))
    except Stopped:
        os._exit(128 + signal.SIGTERM)  # the task has unwound; the parent reads nothing more


if __name__ == "__main__":
    serve(*(int(value) for value in sys.argv[1:4]))
