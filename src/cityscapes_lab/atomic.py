"""Writing files and folders so that a reader never sees a half-written one: write to a temporary name, rename."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def partial_path(final: Path) -> Path:
    """The temporary name a folder is built under before it is renamed to ``final``."""
    final = Path(final)
    return final.with_name(final.name + ".partial")


def publish_folder(partial: Path, final: Path) -> None:
    """Rename a completed ``partial`` folder to ``final``, replacing an existing ``final`` (for --force)."""
    partial, final = Path(partial), Path(final)
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(partial, final)
    if old.exists():
        shutil.rmtree(old)


def check_writable_parent(target: Path) -> None:
    """Create ``target``'s parent if needed and prove it writable; raises DataError naming the folder."""
    from .errors import DataError

    parent = Path(target).resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(
            f"{parent}: cannot write there ({exc.strerror or exc}); choose an output folder you can write to"
        ) from None
