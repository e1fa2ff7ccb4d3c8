"""A Ctrl-C that CPython drops (raised inside a weakref callback) still stops the CLI's loops at their next step;
``python -m cityscapes_lab`` exits 130 after any Ctrl-C it catches."""

import signal
import subprocess
import sys
import weakref

import pytest

from cityscapes_lab.interrupts import ctrl_c_recorded, raise_if_interrupted
from cityscapes_lab.parallel import run_tasks


class _Thing:
    pass


def _ctrl_c_inside_a_callback() -> None:
    """Ctrl-C arrives while a weakref callback runs (as an import's module-lock clean-up does): the
    KeyboardInterrupt raised there never reaches the caller."""
    thing = _Thing()
    ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))  # noqa: F841 - kept alive on purpose
    del thing


@pytest.fixture
def ctrl_c_as_from_a_terminal(monkeypatch):
    """Python's own Ctrl-C handler, whatever the test runner was started with (a background job ignores SIGINT),
    and the dropped interrupts collected instead of reported as warnings."""
    dropped = []
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_type))
    yield dropped
    signal.signal(signal.SIGINT, previous)


def test_a_dropped_ctrl_c_is_raised_by_the_next_check_and_forgotten_after_the_block(ctrl_c_as_from_a_terminal):
    with ctrl_c_recorded():
        _ctrl_c_inside_a_callback()  # returns: the interrupt was dropped
        assert ctrl_c_as_from_a_terminal == [KeyboardInterrupt]
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    raise_if_interrupted()  # outside the block nothing is pending


def test_run_tasks_stops_at_the_task_after_a_dropped_ctrl_c(ctrl_c_as_from_a_terminal):
    ran = []

    def task(number: int) -> int:
        ran.append(number)
        if number == 1:
            _ctrl_c_inside_a_callback()
        return number

    with ctrl_c_recorded(), pytest.raises(KeyboardInterrupt):
        [result for _, result in run_tasks(task, range(5), workers=1, desc="t")]
    assert ran == [0, 1]
    assert ctrl_c_as_from_a_terminal == [KeyboardInterrupt]


def test_a_ctrl_c_that_is_ignored_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ctrl_c_recorded():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


_INTERRUPTED_IN_A_STRING_EXEC = """
from cityscapes_lab import cli

def interrupted(*args, **kwargs):  # as when Ctrl-C lands while a dataclass builds its methods
    exec("raise KeyboardInterrupt", {})

cli.cli.main = interrupted
cli.main(["config"])
"""


def test_python_m_exits_130_after_a_ctrl_c_inside_a_string_exec(tmp_path):
    """CPython would end a ``python -m`` process by SIGINT (returncode -2), overriding the CLI's exit code."""
    (tmp_path / "interrupted_cli.py").write_text(_INTERRUPTED_IN_A_STRING_EXEC)
    result = subprocess.run([sys.executable, "-m", "interrupted_cli"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "interrupted; run the same command again to continue where it stopped"
