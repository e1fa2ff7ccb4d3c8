"""Reading the raw Cityscapes download, extracted or as the official zips, and validating it before any work.

``open_raw`` indexes every file under the official top folders (``leftImg8bit/``, ``gtFine/``, ``gtCoarse/``),
wherever they are: extracted in the given folder or one level below it, or inside zips in the given folder.
``scan`` lists the frames of the wanted splits and checks them: required folders, a labelIds PNG for every image,
readable PNG headers, one size for all images. Every problem is a DataError that names the file and the fix.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import png
from .layout import (COARSE_FOLDER, FINE_FOLDER, IMAGE_FOLDER, OFFICIAL_COUNTS, FrameId, annotation_path,
                     find_frame_id, label_path)

TOP_FOLDERS = (IMAGE_FOLDER, FINE_FOLDER, COARSE_FOLDER)
_IMAGE_NAME = re.compile(r"^leftImg8bit/([^/]+)/([^/]+)/([^/]+)_leftImg8bit\.png$")
FIX_LOCATION = ("point --raw at the folder holding the extracted download (leftImg8bit/ and gtFine/) or the "
                "official zips (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip)")


@dataclass(frozen=True)
class RawIndex:
    """Every file of the download: relative path (``leftImg8bit/train/...``) -> its container, a folder or a zip."""

    root: Path
    files: dict[str, str]
    dirs: frozenset[str]  # every folder that exists, e.g. "leftImg8bit/train", even an empty one
    zips: tuple[str, ...]  # the zips in use (empty for an extracted download)

    def describe(self, relpath: str) -> str:
        """A file's name for messages: its path, or ``zip:member``."""
        container = self.files.get(relpath)
        return member_name(container, relpath) if container else str(self.root / relpath)

    def read(self, relpath: str) -> bytes:
        return read_member(self.files[relpath], relpath)

    def decode(self, relpath: str) -> np.ndarray:
        """A PNG of the download as an array; DataError naming the file if it does not decode."""
        return decode_member(self.files[relpath], relpath)


@lru_cache(maxsize=16)
def _open_zip(path: str, mtime_ns: int, size: int) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)  # one handle per process and file version, kept open


# A forked child must not read through its parent's handles: they share one file offset, and two processes seeking
# and reading through it get each other's bytes ("Bad CRC-32").
os.register_at_fork(after_in_child=_open_zip.cache_clear)


def _zip(path: str) -> zipfile.ZipFile:
    stat = os.stat(path)
    return _open_zip(path, stat.st_mtime_ns, stat.st_size)


def member_name(container: str, relpath: str) -> str:
    """A file's name for messages: its path, or ``zip:member``."""
    return f"{container}:{relpath}" if container.endswith(".zip") else os.path.join(container, relpath)


def _unreadable_png(container: str, relpath: str, exc: png.PngError) -> DataError:
    return DataError(f"{member_name(container, relpath)}: unreadable PNG ({exc}); replace it from the official "
                     "download")


def read_member(container: str, relpath: str, length: int | None = None) -> bytes:
    """Bytes of ``relpath`` in a folder or zip container (the first ``length`` bytes if given)."""
    try:
        if container.endswith(".zip"):
            with _zip(container).open(relpath) as handle:
                return handle.read(length) if length is not None else handle.read()
        with open(os.path.join(container, relpath), "rb") as handle:
            return handle.read(length) if length is not None else handle.read()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise DataError(f"{member_name(container, relpath)}: cannot be read ({exc}); replace it from the official "
                        "download") from None


def decode_member(container: str, relpath: str) -> np.ndarray:
    """A PNG in a folder or zip container as an array; DataError naming the file if it does not decode."""
    try:
        return png.decode(read_member(container, relpath))
    except png.PngError as exc:
        raise _unreadable_png(container, relpath, exc) from None


def _index_folder(root: Path, files: dict[str, str], dirs: set[str]) -> None:
    for top in TOP_FOLDERS:
        base = root / top
        if not base.is_dir():
            continue
        for folder, _, names in os.walk(base):
            rel = Path(folder).relative_to(root).as_posix()
            dirs.add(rel)
            for name in names:
                files.setdefault(f"{rel}/{name}", str(root))


def _index_zip(path: Path, files: dict[str, str], dirs: set[str]) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip file ({exc}); the download is truncated or broken, "
                        "download it again") from None
    used = False
    for name in names:
        if name.split("/", 1)[0] not in TOP_FOLDERS:
            continue
        used = True
        parts = name.rstrip("/").split("/")
        dirs.update("/".join(parts[:k]) for k in range(1, len(parts)))
        if name.endswith("/"):
            dirs.add(name.rstrip("/"))
        else:
            files.setdefault(name, str(path))
    return used


def open_raw(raw: Path) -> RawIndex:
    """Index a download: extracted folders in ``raw`` or one level below, and the zips in ``raw``."""
    raw = Path(raw)
    if not raw.exists():
        raise DataError(f"{raw}: no such folder; {FIX_LOCATION}")
    if not raw.is_dir():
        raise DataError(f"{raw}: is a file, not a folder; {FIX_LOCATION}")
    files: dict[str, str] = {}
    dirs: set[str] = set()
    roots = [raw] + sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    for root in roots:
        _index_folder(root, files, dirs)
    zips = tuple(str(p) for p in sorted(raw.glob("*.zip")) if _index_zip(p, files, dirs))
    return RawIndex(raw, files, frozenset(dirs), zips)


@dataclass(frozen=True)
class RawFrame:
    """One frame of a split: its image and (except for unlabeled splits) its labelIds PNG."""

    split: str
    frame: FrameId
    image: str
    label: str | None
    instance: str | None = None  # *_instanceIds.png, where the download has it


def _check_png(index: RawIndex, relpath: str, kind: str) -> png.PngHeader:
    """Header (and, for plain files, the end marker) of one PNG; DataError naming the file otherwise."""
    container = index.files[relpath]
    try:
        header = png.parse_header(read_member(container, relpath, 33))
        if not container.endswith(".zip"):
            path = os.path.join(container, relpath)
            with open(path, "rb") as handle:
                handle.seek(max(0, os.path.getsize(path) - len(png.IEND_TRAILER)))
                if handle.read() != png.IEND_TRAILER:
                    raise png.PngError("truncated PNG (no end marker)")
    except png.PngError as exc:
        raise _unreadable_png(container, relpath, exc) from None
    if kind == "image" and not (header.bit_depth == 8 and header.colour_type in (2, 6)):
        raise DataError(f"{index.describe(relpath)}: not an 8-bit RGB image; use the official leftImg8bit PNGs")
    if kind == "label" and not (header.colour_type == 0 and header.bit_depth in (8, 16)):
        raise DataError(f"{index.describe(relpath)}: not a greyscale label image; use the official "
                        "*_labelIds.png files (not the colour or instance PNGs)")
    return header


def scan(index: RawIndex, splits: dict[str, str | None]) -> dict[str, list[RawFrame]]:
    """The frames of each split, sorted by id, validated.

    ``splits`` maps a split name to the annotation folder its labels come from (``gtFine``, ``gtCoarse``), or to
    None for a split whose images are used without labels (the official test split). Raises DataError for a
    missing folder, an empty split, an image without labelIds, an unreadable PNG or mixed image sizes.
    """
    frames: dict[str, list[RawFrame]] = {}
    for split, folder in splits.items():
        for needed in (IMAGE_FOLDER, f"{IMAGE_FOLDER}/{split}") + ((folder, f"{folder}/{split}") if folder else ()):
            if needed not in index.dirs:
                raise DataError(f"{index.root}: holds no {needed}/ folder (extracted or in a zip); {FIX_LOCATION}")
        frames[split] = _scan_split(index, split, folder)
    first: tuple[str, png.PngHeader] | None = None
    for split_frames in frames.values():
        for item in split_frames:
            header = _check_png(index, item.image, "image")
            first = first or (item.image, header)
            if (header.width, header.height) != (first[1].width, first[1].height):
                raise DataError(
                    f"{index.describe(item.image)}: is {header.width}x{header.height} but "
                    f"{index.describe(first[0])} is {first[1].width}x{first[1].height}; all images must have one "
                    "size (is a part of another download mixed in?)")
            if item.label is not None:
                label = _check_png(index, item.label, "label")
                if (label.width, label.height) != (header.width, header.height):
                    raise DataError(f"{index.describe(item.label)}: is {label.width}x{label.height} but its image is "
                                    f"{header.width}x{header.height}; replace it from the official download")
    return frames


def _scan_split(index: RawIndex, split: str, folder: str | None) -> list[RawFrame]:
    prefix = f"{IMAGE_FOLDER}/{split}/"
    images = sorted(rel for rel in index.files if rel.startswith(prefix) and rel.endswith("_leftImg8bit.png"))
    if not images:
        raise DataError(f"{index.describe(prefix)}: the {split} split is empty (no *_leftImg8bit.png images); "
                        "extract the images there or point --raw at a complete download")
    result = []
    for rel in images:
        match = _IMAGE_NAME.match(rel)
        frame = find_frame_id(match[3]) if match else None
        if frame is None or str(frame) != match[3]:
            raise DataError(f"{index.describe(rel)}: not named <city>_<seq>_<frame>_leftImg8bit.png; rename or "
                            "remove it")
        label = instance = None
        if folder is not None:
            label = label_path(split, frame, folder)
            if label not in index.files:
                raise DataError(f"{index.describe(rel)}: has no {label}; extract the {folder} annotations beside "
                                "the images, or remove this image")
            instance = annotation_path(split, frame, "instanceIds.png", folder)
            instance = instance if instance in index.files else None
        result.append(RawFrame(split, frame, rel, label, instance))
    return sorted(result, key=lambda item: str(item.frame))


def count_notes(frames: dict[str, list[RawFrame]]) -> list[str]:
    """Counts that differ from the official download (a subset is legitimate, so these are notes, not errors)."""
    return [f"{split}: {len(items)} images (the official download has {OFFICIAL_COUNTS[split]})"
            for split, items in frames.items()
            if split in OFFICIAL_COUNTS and len(items) != OFFICIAL_COUNTS[split]]


def is_stand_in(index: RawIndex) -> bool:
    """Whether the download is generated stand-in data (``cityscapes-lab synth`` leaves a marker)."""
    from .synth.writer import MARKER

    if (index.root / MARKER).exists():
        return True
    for path in index.zips:
        try:
            if b"stand-in" in _zip(path).read("README"):
                return True
        except KeyError:
            continue
    return False
