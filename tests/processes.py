"""Running the command line in a separate process, optionally killed with SIGKILL after its n-th epoch checkpoint
(to test that a study resumes after ``kill -9``); Ctrl-C as a terminal delivers it; the TCP sockets a process
tree listens on (from /proc); a task that runs until it is stopped (in worker processes, which import this
module)."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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


def as_from_a_terminal() -> None:
    """A ``preexec_fn``: Ctrl-C reaches the command as a terminal delivers it. A test runner started in the
    background (``cmd &`` without job control, as CI may) passes SIGINT on ignored, and Python then installs no
    KeyboardInterrupt handler at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _descendants(root: int) -> set[int]:
    """``root`` and every process under it (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words in host (little-endian) order."""
    raw = b"".join(bytes.fromhex(hex_address[i:i + 8])[::-1] for i in range(0, len(hex_address), 8))
    address = ipaddress.ip_address(raw)
    return getattr(address, "ipv4_mapped", None) or address


def listening_sockets(root: int) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, int]]:
    """(address, port, pid) of every TCP socket listening in process ``root`` or a process under it."""
    owners: dict[str, int] = {}
    for pid in _descendants(root):
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owners[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owners:  # 0A: LISTEN
                host, port = fields[1].split(":")
                found.append((_address(host), int(port, 16), owners[fields[9]]))
    return found


def run_until_stopped(marker: str) -> None:
    """Work (in Python, as a training does between its steps) until stopped, at most 2 minutes: ``MARKER.started``
    says it began, ``MARKER`` that it unwound."""
    try:  # begun inside the try: a stop that comes at once still finds it there
        Path(marker + ".started").write_text("")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        Path(marker).write_text("unwound")


@dataclass
class RunUntilStopped:
    """``run_until_stopped`` as a study task (the executors run ``task.run()``)."""

    marker: str

    def run(self) -> None:
        run_until_stopped(self.marker)


def wait_for_start(markers: list[str], seconds: float = 240) -> None:
    """Wait until every task has begun (generously: a Ray task took 50 s to begin on a busy 2-core machine)."""
    deadline = time.monotonic() + seconds
    while not all(Path(m + ".started").exists() for m in markers):
        assert time.monotonic() < deadline, "the tasks did not start"
        time.sleep(0.01)
