"""The worker pool: results, errors and dead workers, forked or fresh workers, and no worker outlives its
parent (kill -9 of `prepare` or `synth`)."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cityscapes_lab.parallel import RemoteTraceback, WorkerDied, run_tasks

# In this process torch is loaded, so the pool starts fresh interpreters; in a new process without torch it forks.
_FORKED = """
import math, sys
from cityscapes_lab import parallel
assert parallel._can_fork()
print(sorted(r for _, r in parallel.run_tasks(math.sqrt, range(40), workers=3, desc="t")))
"""


def test_results_are_those_of_the_function_in_either_kind_of_worker():
    expected = sorted(math.sqrt(k) for k in range(40))
    assert sorted(r for _, r in run_tasks(math.sqrt, range(40), workers=3, desc="t")) == expected
    forked = subprocess.run([sys.executable, "-c", _FORKED], capture_output=True, text=True, timeout=60)
    assert forked.returncode == 0, forked.stderr
    assert forked.stdout.strip() == str(expected)


_OPENCV_POOL_THEN_FORK = """
import cv2, numpy as np
from cityscapes_lab import parallel
def blur(k):
    cv2.setNumThreads(1)
    return float(cv2.GaussianBlur(np.full((500, 500), k, np.float32), (9, 9), 2).mean())
cv2.resize(np.random.rand(2000, 2000).astype(np.float32), (4000, 4000))  # OpenCV's thread pool runs now
assert parallel._can_fork()
before = cv2.getNumThreads()
print(sorted(r for _, r in parallel.run_tasks(blur, range(6), workers=2, desc="t")))
print(cv2.getNumThreads() == before)
"""


def test_forked_workers_do_not_hang_on_the_parents_opencv_threads():
    """OpenCV's pool threads do not survive a fork; a child that used OpenCV waited for them for ever."""
    result = subprocess.run([sys.executable, "-c", _OPENCV_POOL_THEN_FORK], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str([float(k) for k in range(6)])
    assert lines[1] == "True"  # the parent's setting is back


def test_an_error_in_a_worker_is_raised_with_its_traceback():
    with pytest.raises(ValueError, match="invalid literal") as raised:
        list(run_tasks(int, ["1", "2", "x", "4"], workers=2, desc="t"))
    assert isinstance(raised.value.__cause__, RemoteTraceback) and "Traceback" in str(raised.value.__cause__)


def test_a_worker_that_dies_is_a_one_line_error():
    with pytest.raises(WorkerDied, match="exited with code 3 while working.*run the same command again"):
        list(run_tasks(os._exit, [3, 3, 3], workers=2, desc="t"))


def _state_and_parent(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent pid from /proc, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    """Running or sleeping (a zombie counts as gone)."""
    found = _state_and_parent(pid)
    return found is not None and found[0] != "Z"


def _children(parent: int) -> list[int]:
    """Live processes whose parent is ``parent``."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid, found in zip(pids, map(_state_and_parent, pids))
            if found is not None and found[0] != "Z" and found[1] == parent]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("command", ["synth", "prepare-with-torch-loaded"])
def test_workers_exit_when_the_main_process_is_killed(command, raw_small, tmp_path):
    """Forked workers (synth) and fresh ones (torch loaded first) both exit after kill -9 of their parent."""
    if command == "synth":
        args = [sys.executable, "-m", "cityscapes_lab", "synth", str(tmp_path / "raw"), "--train", "400", "--val",
                "0", "--test", "0", "--size", "1024x512", "--workers", "2"]
    else:
        args = [sys.executable, "-c", "import sys, torch; from cityscapes_lab.cli import main; main(sys.argv[1:])",
                "prepare", "--raw", str(raw_small), "--out", str(tmp_path / "p"), "--protocol", "standard",
                "--split-family", "seeded", "--workers", "2"]
    main = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(workers := _children(main.pid)) < 2 and main.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(workers) == 2, f"the command ended or started no workers (exit {main.poll()})"
        time.sleep(0.5)  # the workers are busy now
        os.kill(main.pid, signal.SIGKILL)
        main.wait()
        deadline = time.monotonic() + 20
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, workers)), "a worker outlived its parent"
    finally:
        main.kill()
        for pid in _children(main.pid):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_c_stops_the_workers_at_once_and_their_tasks_unwind(tmp_path, monkeypatch):
    """Ctrl-C while both workers are in the middle of a task: run_tasks stops them at once, not after their tasks,
    and each task unwinds first (so that it removes its temporary files)."""
    import threading

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))  # the workers import processes
    from processes import run_until_stopped

    markers = [str(tmp_path / f"task{k}") for k in range(4)]  # two per worker: one runs, the next waits
    begun = lambda: [m for m in markers if Path(m + ".started").exists()]

    def ctrl_c_once_both_run() -> None:
        deadline = time.monotonic() + 60
        while len(begun()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a test runner may differ)
    try:
        threading.Thread(target=ctrl_c_once_both_run, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            list(run_tasks(run_until_stopped, markers, workers=2, desc="t"))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 60  # the tasks run for 2 minutes
    assert len(begun()) == 2, "the two workers did not each begin a task"
    assert [Path(m).read_text() for m in begun()] == ["unwound"] * 2
