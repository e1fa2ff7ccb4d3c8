"""Ctrl-C that is never lost, and exit code 130 after it.

CPython runs a signal's handler wherever the main thread happens to be, and the KeyboardInterrupt raised there can
be dropped: inside a weakref callback or a ``__del__`` it is only printed, and C code that clears errors swallows
it silently (seen: a Ctrl-C during ``synth``'s first frame, which imports ``numpy.random``, let it run to the end).
So while the CLI runs, its handler also records the Ctrl-C, and every long loop calls ``raise_if_interrupted`` once
per step: a dropped interrupt is raised there. The Python API keeps Python's own handler.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_interrupted = False


def _record_and_raise(signum: int, frame: object) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came while ``ctrl_c_recorded`` was on (the one raised may be lost)."""
    if _interrupted:
        raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_recorded() -> Iterator[None]:
    """Record Ctrl-C for ``raise_if_interrupted`` inside the block; a SIGINT that is ignored (a background job) or
    handled by someone else stays as it is."""
    global _interrupted
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    previous = signal.signal(signal.SIGINT, _record_and_raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupted = False


def forget_interpreter_mark() -> None:
    """Call before exiting on a caught Ctrl-C. CPython marks a KeyboardInterrupt that ends a string ``exec`` or
    ``eval`` (dataclasses and namedtuple build their methods so) as unhandled even when a caller catches it, and
    under ``python -m`` it then ends the process by SIGINT instead of with the exit code given; every string exec
    clears that mark as it starts."""
    exec("", {})
