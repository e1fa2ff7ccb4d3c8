"""Saving and loading a set of (id, image, label) arrays as a folder: derived training sets (the ALDT set,
pseudo-labelled sets) are kept in the prepared-array format, not as PNGs. A set whose rows all exist elsewhere
(the labeled images and the IM pairs of a generation) is written as links to those rows instead of a copy: at
1024x2048 a copy of a students' set would be 25 GB per generation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from .. import atomic
from ..errors import DataError
from ..outputs import check_output_folder, holds_only
from .prepared import SplitArrays
from .rows import BlankedRows, RowArray, StackedRows

LINKS = "links.json"


def save_arrays(folder: Path, arrays: SplitArrays, extra: dict | None = None) -> None:
    """Write ``folder/{images,labels}.npy`` and ``ids.json`` under a temporary name, then rename."""
    folder = Path(folder)
    partial = atomic.partial_path(folder)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    np.save(partial / "images.npy", np.ascontiguousarray(arrays.images))
    if arrays.labels is not None:
        np.save(partial / "labels.npy", np.ascontiguousarray(arrays.labels))
    for name, values in (extra or {}).items():
        np.save(partial / f"{name}.npy", np.ascontiguousarray(values))
    atomic.write_json(partial / "ids.json", {"name": arrays.name, "ids": list(arrays.ids)})
    atomic.publish_folder(partial, folder)


def link_arrays(folder: Path, name: str, ids: list[str], images: list[RowArray], labels: list[RowArray]) -> None:
    """Write a set whose rows are rows of other files, atomically: ``images`` and ``labels`` are the parts of each
    in row order (``RowArray``s, each a file and optionally some of its rows). ``ids.json`` and ``links.json``
    (each part's file, relative to the set and absolute, its rows and its size, checked when the set is read)."""
    folder = Path(folder)
    partial = atomic.partial_path(folder)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    atomic.write_json(partial / LINKS, links_to(folder, images=images, labels=labels))
    atomic.write_json(partial / "ids.json", {"name": name, "ids": list(ids)})
    atomic.publish_folder(partial, folder)


def links_to(folder: Path, partial: Path | None = None, **parts: list[RowArray | BlankedRows]) -> dict:
    """The ``links.json`` of a set in ``folder`` whose named arrays (images, labels) are rows of other files; an
    array it does not name is the folder's own ``.npy`` file (e.g. pseudo-labels beside linked images). A
    ``BlankedRows`` part links its mask too. Files inside ``partial`` (the folder being written) are named as
    they will be once it is published as ``folder``."""
    final = Path(folder).resolve()

    def describe(part: RowArray | BlankedRows) -> dict:
        if isinstance(part, BlankedRows):
            return {**describe(part.images), "blank": describe(part.masks)}
        path, size = part.path.resolve(), part.path.stat().st_size
        if partial is not None and path.is_relative_to(Path(partial).resolve()):
            path = final / path.relative_to(Path(partial).resolve())
        return {"file": os.path.relpath(path, final), "absolute": str(path),
                "rows": None if part.rows is None else part.rows.tolist(), "bytes": size}

    return {kind: [describe(p) for p in kind_parts] for kind, kind_parts in parts.items()}


def _linked(folder: Path, parts: list[dict]) -> StackedRows:
    return StackedRows([_part(folder, part) for part in parts])


def _part(folder: Path, part: dict) -> RowArray | BlankedRows:
    """One linked part: rows of a file (checked to be there and unchanged), blanked by a mask where it has one."""
    if "blank" in part:
        rows = _part(folder, {key: value for key, value in part.items() if key != "blank"})
        return BlankedRows(rows, _part(folder, part["blank"]))
    path = next((p for p in (folder / part["file"], Path(part["absolute"])) if p.exists()), None)
    if path is None:
        raise DataError(f"{folder}: the set links to {part['absolute']}, which is missing; the study's data "
                        "or its pseudo-labelled pairs were moved or deleted: restore them, or run the study in "
                        "a new folder")
    if path.stat().st_size != part["bytes"]:
        raise DataError(f"{folder}: {path} changed after this set was made from it; restore it, or run the "
                        "study in a new folder")
    return RowArray(path, None if part["rows"] is None else np.asarray(part["rows"], dtype=np.int64))


def load_arrays(folder: Path, lazy: bool = True) -> SplitArrays:
    """Read a folder written by ``save_arrays`` or ``link_arrays`` (rows read on demand by default, see
    ``RowArray``)."""
    folder = Path(folder)
    read = RowArray if lazy else np.load
    try:
        info = json.loads((folder / "ids.json").read_text())
        links = json.loads((folder / LINKS).read_text()) if (folder / LINKS).exists() else {}
        arrays = {}
        for kind in ("images", "labels"):
            if kind in links:
                arrays[kind] = _linked(folder, links[kind])
                arrays[kind] = arrays[kind] if lazy else np.asarray(arrays[kind])
            else:
                path = folder / f"{kind}.npy"
                arrays[kind] = read(path) if kind == "images" or path.exists() else None
        images, labels = arrays["images"], arrays["labels"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{folder}: not a readable array set ({exc}); an array set is a folder the study writes "
                        "under RUNS/datasets/ (ids.json, images.npy, labels.npy), e.g. "
                        "RUNS/datasets/im/run1/n2/gen0/set") from None
    return _checked(folder, info, images, labels)


def _checked(folder: Path, info: dict, images, labels) -> SplitArrays:
    if len(images) != len(info["ids"]) or (labels is not None and len(labels) != len(images)):
        raise DataError(f"{folder}: ids.json, images.npy and labels.npy disagree on the number of rows; the set was "
                        "not written by this version or was changed afterwards")
    return SplitArrays(info["name"], info["ids"], images, labels)


def save_named(folder: Path, ids: list[str], **arrays: np.ndarray) -> None:
    """Write named arrays (one row per id) and ``ids.json`` as a folder, atomically; read them with
    ``load_extra``."""
    folder = Path(folder)
    partial = atomic.partial_path(folder)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    for name, values in arrays.items():
        np.save(partial / f"{name}.npy", np.ascontiguousarray(values))
    atomic.write_json(partial / "ids.json", {"name": folder.name, "ids": list(ids)})
    atomic.publish_folder(partial, folder)


def load_extra(folder: Path, name: str) -> RowArray | None:
    """An extra array saved beside the images (e.g. inconsistency masks), or None."""
    path = Path(folder) / f"{name}.npy"
    return RowArray(path) if path.exists() else None


def export_png(folder: Path, out: Path) -> int:
    """Write an array folder in the study's PNG layout: ``images/<id>.png``, ``masks/<id>.png`` and, where the
    folder keeps inconsistency masks, ``im/<id>.png`` (255 under the mask). Returns the number of rows."""
    from . import png

    arrays = load_arrays(folder)
    try:
        masks = load_extra(folder, "masks")
    except (OSError, ValueError) as exc:
        raise DataError(f"{Path(folder) / 'masks.npy'}: unreadable ({exc}); the set was not written by this version "
                        "or was changed afterwards") from None
    out = Path(out)
    check_output_folder(out, what="an exported set (images/, masks/, im/)", ours=holds_only("images", "masks", "im"),
                        inputs=[folder])
    for sub in ("images", "masks") + (("im",) if masks is not None else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for row, image_id in enumerate(arrays.ids):
        atomic.write_bytes(out / "images" / f"{image_id}.png", png.encode(np.asarray(arrays.images[row])))
        if arrays.labels is not None:
            atomic.write_bytes(out / "masks" / f"{image_id}.png", png.encode(np.asarray(arrays.labels[row])))
        if masks is not None:
            im = np.asarray(masks[row]).astype(np.uint8) * 255
            atomic.write_bytes(out / "im" / f"{image_id}.png", png.encode(im))
    return len(arrays.ids)
