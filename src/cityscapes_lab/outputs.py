"""Where a command may write: the one check every command runs on its output before it writes anything.

An output folder may not be the current folder or contain it, may not be, contain or lie inside one of the
command's inputs, and, when it exists, must be empty or look like what the same command makes (a prepared
folder, a study, stand-in data, ...): ``--force`` replaces only what the tool itself made, so no command can
delete or overwrite data it did not make. An output file may not be a folder. Both must be writable. Every refusal
is a DataError that names the path and says what to do instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import DataError


def _relation(out: Path, other: Path) -> str | None:
    """How ``out`` relates to ``other`` (both resolved): "is", "lies inside", "contains" or None."""
    if out == other:
        return "is"
    if out.is_relative_to(other):
        return "lies inside"
    if other.is_relative_to(out):
        return "contains"
    return None


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, shown: Path | None = None) -> None:
    """Prove that ``path`` (an existing folder, or the folder that would hold it) can be written to; messages name
    ``shown`` (default: ``path``)."""
    base = nearest_existing(path)
    path = shown or path
    if not base.is_dir():
        raise DataError(f"{path}: cannot write there ({base} is a file, not a folder); choose another output")
    probe = base / f".cityscapes-lab-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        same = base == Path(os.path.abspath(path))
        where = f"{path}: cannot write there" if same else f"{path}: cannot write in {base}"
        raise DataError(f"{where} ({exc.strerror or exc}); choose an output you can write to") from None


def visible_entries(folder: Path) -> set[str]:
    """Names in a folder, without hidden ones (``.DS_Store``, our own temporary ``.name.tmp`` files)."""
    return {name for name in os.listdir(folder) if not name.startswith(".")}


def holds_only(*names: str) -> Callable[[Path], bool]:
    """A test for folders whose visible entries all have one of ``names`` (what a command writes there)."""
    allowed = set(names)
    return lambda folder: visible_entries(folder) <= allowed


def check_output_folder(out: Path, *, what: str, ours: Callable[[Path], bool], inputs: Iterable[Path] = (),
                        option: str = "--out") -> Path:
    """Refuse an output folder that could destroy data the command did not make (see the module docstring).

    ``what`` names what the command makes ("a prepared folder"); ``ours(folder)`` tells whether an existing,
    non-empty folder is one. Returns ``out`` resolved.
    """
    out = Path(out)
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or cwd.is_relative_to(resolved):
        where = "is" if resolved == cwd else "contains"
        raise DataError(f"{out}: {where} the current folder; give {option} a new folder for {what}, e.g. "
                        f"{option} {Path(out, 'out') if where == 'is' else 'out'}")
    for item in inputs:
        relation = _relation(resolved, Path(item).resolve())
        if relation:
            raise DataError(f"{out}: {relation} the input {item}; give {option} a folder outside it for {what}")
    if resolved.exists():
        if not resolved.is_dir():
            raise DataError(f"{out}: is a file, not a folder; give {option} a new folder for {what}")
        if visible_entries(resolved) and not ours(resolved):
            raise DataError(f"{out}: holds files that are not {what} made by cityscapes-lab, so they are left "
                            f"alone; give {option} a new or empty folder")
    check_writable(resolved, shown=out)
    return resolved


def check_output_file(path: Path, *, option: str) -> Path:
    """Refuse an output file that is a folder or cannot be written; returns it resolved (its folder may not exist
    yet: writing creates it)."""
    path = Path(path)
    resolved = path.resolve()
    if resolved.is_dir():
        raise DataError(f"{path}: is a folder; give {option} a file name, e.g. {option} {Path(path, 'scores.json')}")
    check_writable(resolved.parent, shown=path)
    return resolved


def check_partial(partial: Path, final: Path, marker: str) -> None:
    """Refuse to reuse a ``final.partial`` folder (an interrupted build, continued or started over) that the
    command did not make: one of ours has ``marker`` in it."""
    partial = Path(partial)
    if not partial.exists():
        return
    if not partial.is_dir() or (visible_entries(partial) and not (partial / marker).exists()):
        raise DataError(f"{partial}: is in the way (cityscapes-lab builds {Path(final).name} under this name before "
                        "renaming it) and holds files it did not make; move it elsewhere or choose another output")
