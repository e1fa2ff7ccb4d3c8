"""Writing files and folders so that a reader never sees a half-written one: write to a temporary name, rename."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    if path.is_dir():  # else the temporary name would land beside the folder, outside the target's own folder
        raise IsADirectoryError(f"{path} is a folder")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def partial_path(final: Path) -> Path:
    """The temporary name a folder is built under before it is renamed to ``final``."""
    final = Path(final)
    return final.with_name(final.name + ".partial")


def publish_folder(partial: Path, final: Path) -> None:
    """Rename a completed ``partial`` folder to ``final``, replacing an existing ``final`` (for --force; the caller
    has made sure that it is one of ours). The old one moves to a hidden name of its own first, so no other path
    is touched."""
    partial, final = Path(partial), Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.replaced-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(partial, final)
    if old is not None:
        shutil.rmtree(old)
