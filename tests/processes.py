"""Running the command line in a separate process, optionally killed with SIGKILL after its n-th epoch checkpoint
(to test that a study resumes after ``kill -9``)."""

from __future__ import annotations

import os
import subprocess
import sys

_KILL_AFTER_EPOCH_SAVES = """
import os, signal, sys
import cityscapes_lab.engine.train as train
saves = 0
original = train.save_checkpoint
def save_then_maybe_die(path, content):
    global saves
    original(path, content)
    saves += 1
    if saves == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)
train.save_checkpoint = save_then_maybe_die
from cityscapes_lab.cli import main
main(sys.argv[1:])
"""


def run_cli(args: list[str], kill_after_epoch_saves: int | None = None) -> subprocess.CompletedProcess:
    """``python -m cityscapes_lab ARGS`` in a new process; with ``kill_after_epoch_saves`` the process kills
    itself (SIGKILL) right after writing that many epoch checkpoints."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if kill_after_epoch_saves is None:
        command = [sys.executable, "-m", "cityscapes_lab", *args]
    else:
        command = [sys.executable, "-c", _KILL_AFTER_EPOCH_SAVES.format(kill_after=kill_after_epoch_saves), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True)
