"""One driver per study folder: a lock held while a study runs, so that a second driver is refused instead of
training the same models and writing the same files."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError
from ..outputs import check_output_folder, holds_only

LOCK_NAME = ".study.lock"


@contextlib.contextmanager
def study_lock(root: Path, inputs: list[Path]) -> Iterator[None]:
    """Hold ``root/.study.lock`` (an advisory lock the kernel drops when the process ends, even after kill -9);
    ConfigError naming the holder if another process has it."""
    from .keys import StudyLayout

    check_output_folder(root, what="a study", inputs=inputs, ours=lambda folder: StudyLayout(
        Path(folder)).database.exists() or holds_only(LOCK_NAME)(folder))
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            raise ConfigError(f"{root}: another study driver is running on this folder ({holder}); wait for it to "
                              "finish, or stop it and run the command again") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
        yield
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError):
        return "a process that holds its lock"
