"""Writing stand-in data in the official Cityscapes layout, as folders or as the official zips.

Every image is drawn from its own seed (derived from the dataset seed, its split and its index), so the output is
the same bytes for the same options, whatever the number of workers. The tree is built under ``OUT.partial`` and
renamed when complete; a rerun continues an interrupted build.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from ... import atomic
from ...errors import ConfigError, DataError
from ...outputs import check_output_folder, check_partial
from ...parallel import default_workers, run_tasks
from .. import png
from ..layout import (COARSE_FOLDER, FINE_FOLDER, IMAGE_FOLDER, OFFICIAL_CITIES, FrameId, annotation_path,
                      find_frame_id, image_path)
from ..split_families import FAMILIES, family_ids
from .render import annotation_json, colour_image, label_images, render
from .scene import generate_scene

#: Written last into a finished tree (and as README into each zip); ``prepare`` reads it to label results as
#: coming from stand-in data.
MARKER = "README_STAND_IN.txt"
MARKER_TEXT = (
    "Generated stand-in data in the official Cityscapes layout, made by `cityscapes-lab synth`.\n"
    "These are procedurally drawn street scenes, not Cityscapes recordings: numbers measured on them say\n"
    "nothing about Cityscapes.\n"
)
SPLITS = ("train", "val", "test", "train_extra")
ZIP_OF_FOLDER = {  # (top folder, split) -> the official zip that holds it
    (IMAGE_FOLDER, "train"): "leftImg8bit_trainvaltest.zip", (IMAGE_FOLDER, "val"): "leftImg8bit_trainvaltest.zip",
    (IMAGE_FOLDER, "test"): "leftImg8bit_trainvaltest.zip", (IMAGE_FOLDER, "train_extra"): "leftImg8bit_trainextra.zip",
    (FINE_FOLDER, "train"): "gtFine_trainvaltest.zip", (FINE_FOLDER, "val"): "gtFine_trainvaltest.zip",
    (FINE_FOLDER, "test"): "gtFine_trainvaltest.zip", (COARSE_FOLDER, "train_extra"): "gtCoarse.zip",
}


@dataclass(frozen=True)
class SynthOptions:
    """What ``cityscapes-lab synth`` makes."""

    counts: dict[str, int] = field(default_factory=lambda: {"train": 100, "val": 40, "test": 10, "train_extra": 0})
    width: int = 2048  # the official size
    height: int = 1024
    seed: int = 0
    as_zips: bool = False  # write the official zips instead of folders
    # Ids the train split must hold (e.g. a published family's labeled images, see ``train_ids_from``); the rest
    # of counts["train"] (at least this many) are generated ids not among them. None: generated ids only.
    train_ids: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _Task:
    root: str
    split: str
    index: int  # the frame's place in its split (sorted ids): with the seed, it fixes the frame's pixels
    frame: FrameId
    options: SynthOptions  # without train_ids: every task is pickled on its own


def frame_of(split: str, index: int) -> FrameId:
    """The ``index``-th frame of a split: cities in turn, sequence numbers counting up, frame 19 (as gtFine)."""
    cities = OFFICIAL_CITIES[split]
    return FrameId(cities[index % len(cities)], index // len(cities), 19)


def train_ids_from(source: str) -> tuple[str, ...]:
    """The train ids ``synth --train-ids SOURCE`` names, sorted: SOURCE is published split families,
    comma-separated (``cps``, ``cps,u2pl``: every labeled image of their lists), or a file with a
    ``<city>_<seq>_<frame>`` on each line (any other text on the line is ignored, as in U2PL/UniMatch lists)."""
    names = [part.strip() for part in source.split(",")]
    if all(name in FAMILIES for name in names):
        return tuple(family_ids(names))
    path = Path(source)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        families = ", ".join(name for name, family in FAMILIES.items() if family.published)
        raise DataError(f"--train-ids {source}: neither split families ({families}) nor a readable list file "
                        f"({getattr(exc, 'strerror', None) or exc}); fix the name or the path") from None
    ids = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            frame = find_frame_id(line)
            if frame is None:
                raise DataError(f"{path}:{number}: {line.strip()!r} names no image id <city>_<seq>_<frame>; fix "
                                "the line")
            ids.append(str(frame))
    if not ids:
        raise DataError(f"{path}: names no image ids; give one <city>_<seq>_<frame> per line")
    return tuple(sorted(set(ids)))


def split_frames(split: str, options: SynthOptions) -> list[FrameId]:
    """The frames a split gets, in the order that seeds them: generated ids (``frame_of``), or for train with
    ``train_ids`` those ids plus generated ones not among them up to ``counts["train"]``, sorted."""
    count = options.counts.get(split, 0)
    if split != "train" or options.train_ids is None:
        return [frame_of(split, i) for i in range(count)]
    named = {find_frame_id(i) for i in options.train_ids}
    if None in named:
        raise ConfigError("train_ids must be <city>_<seq>_<frame> ids")
    if count < len(named):
        raise ConfigError(f"--train {count} is fewer than the {len(named)} --train-ids; give at least "
                          f"{len(named)} (the ids plus generated ones) or leave --train out")
    extra, index = [], 0
    while len(named) + len(extra) < count:
        frame = frame_of(split, index)
        index += 1
        if frame not in named:
            extra.append(frame)
    return sorted(named | set(extra))


def _files(split: str, frame: FrameId) -> list[str]:
    folder = COARSE_FOLDER if split == "train_extra" else FINE_FOLDER
    kinds = ("labelIds.png", "instanceIds.png", "color.png", "polygons.json")
    return [annotation_path(split, frame, kind, folder) for kind in kinds] + [image_path(split, frame)]


def _coarse(annotated: list[tuple[str, np.ndarray]], width: int, height: int) -> list[tuple[str, np.ndarray]]:
    """Coarse annotations as in gtCoarse: only larger objects, simplified and shrunk away from their borders."""
    coarse = []
    for label, polygon in annotated:
        contour = polygon.astype(np.float32).reshape(-1, 1, 2)
        if cv2.contourArea(contour) < 0.002 * width * height:
            continue
        simple = cv2.approxPolyDP(contour, 0.015 * cv2.arcLength(contour, True), True).reshape(-1, 2)
        centre = simple.mean(axis=0)
        shrunk = np.rint(centre + 0.9 * (simple - centre)).astype(np.int64)
        if len(shrunk) >= 3:
            coarse.append((label, shrunk))
    return coarse


def _make_one(task: _Task) -> int:
    """Draw and write one frame's files; returns the bytes written. Skips a frame whose files all exist."""
    root, opts, frame = Path(task.root), task.options, task.frame
    paths = [root / name for name in _files(task.split, frame)]
    if all(path.exists() for path in paths):
        return 0
    entropy = [opts.seed, SPLITS.index(task.split), task.index]
    scene_rng, photo_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(entropy).spawn(2))
    scene = generate_scene(scene_rng, opts.width, opts.height, annotate_all=task.split != "test")
    result = render(scene, photo_rng)
    annotation, label_ids, instance_ids = result.polygons, result.label_ids, result.instance_ids
    if task.split == "train_extra":
        pairs = [(obj["label"], np.array(obj["polygon"])) for obj in annotation["objects"]]
        pairs = _coarse(pairs, opts.width, opts.height)
        annotation = annotation_json(pairs, opts.width, opts.height)
        label_ids, instance_ids = label_images(pairs, opts.width, opts.height)
    contents = [png.encode(label_ids), png.encode(instance_ids), png.encode(colour_image(label_ids)),
                (json.dumps(annotation, indent=2) + "\n").encode(), png.encode(result.photo)]
    for path, data in zip(paths, contents):  # the photo last: its presence marks a finished frame
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, data)
    return sum(map(len, contents))


def _pack_zips(tree: Path) -> None:
    """Move the folder tree into the official zips (fixed timestamps and sorted members: same bytes each time)."""
    members: dict[str, list[Path]] = {}
    for (top, split), zip_name in ZIP_OF_FOLDER.items():
        folder = tree / top / split
        if folder.is_dir():
            members.setdefault(zip_name, []).extend(p for p in folder.rglob("*") if p.is_file())
    for zip_name, files in sorted(members.items()):
        tmp = tree / f".{zip_name}.tmp"
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, text in (("README", MARKER_TEXT), ("license.txt", "Generated data; no licence restrictions.\n")):
                archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), text)
            for path in sorted(files):
                info = zipfile.ZipInfo(path.relative_to(tree).as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
                archive.writestr(info, path.read_bytes())
        tmp.replace(tree / zip_name)
    for top in (IMAGE_FOLDER, FINE_FOLDER, COARSE_FOLDER):
        shutil.rmtree(tree / top, ignore_errors=True)


def synthesize(out: Path, options: SynthOptions, *, workers: int | None = None, force: bool = False) -> bool:
    """Write a stand-in dataset to ``out``; returns False when a complete one with these options was already there.

    Raises DataError if ``out`` holds something else, or cannot be written; ConfigError for fewer train images
    than ``train_ids``.
    """
    out = Path(out)
    frames = {split: split_frames(split, options) for split in SPLITS}  # bad train_ids: refused before any write
    settings = json.loads(json.dumps(asdict(options)))  # as it reads back from the options file
    check_output_folder(out, what="stand-in data", ours=lambda folder: (folder / MARKER).exists())
    if (out / MARKER).exists() and not force:
        previous = out / ".synth-options.json"
        if previous.exists() and json.loads(previous.read_text()) != settings:
            raise DataError(f"{out}: holds stand-in data made with other options; pass --force to replace it")
        return False
    partial = atomic.partial_path(out)
    options_file = partial / ".synth-options.json"
    check_partial(partial, out, options_file.name)
    if partial.exists() and (not options_file.exists() or json.loads(options_file.read_text()) != settings):
        shutil.rmtree(partial)  # an interrupted build with other options: start over
    partial.mkdir(parents=True, exist_ok=True)
    atomic.write_json(options_file, settings)
    shared = replace(options, train_ids=None)
    tasks = [_Task(str(partial), split, i, frame, shared) for split in SPLITS for i, frame in enumerate(frames[split])]
    for _ in run_tasks(_make_one, tasks, workers=workers or default_workers(), desc="synth"):
        pass
    if options.as_zips:
        _pack_zips(partial)
    atomic.write_text(partial / MARKER, MARKER_TEXT)
    atomic.publish_folder(partial, out)
    return True
