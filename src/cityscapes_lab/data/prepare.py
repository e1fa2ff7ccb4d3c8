"""Preparing the raw download for one protocol: resized, relabelled pixel arrays plus the split lists.

Output folder::

    meta.json                      protocol, label scheme, size, source, counts, split family (standard: cps,
                                   u2pl or seeded, with the shipped list and sha256 of each labeled subset),
                                   options, package versions
    splits.json                    split name -> sorted list of image ids <city>_<seq>_<frame>
    arrays/<source>.images.npy     (N, H, W, 3) uint8 RGB, rows in the order of meta["sources"][source]["ids"]
    arrays/<source>.labels.npy     (N, H, W) uint8 class indices (absent for the unlabeled test split)
    arrays/val.instances.npy       (N, H, W) uint16 instance ids (labelId*1000+k) of the val split, for iIoU
    <split>/images|masks/<id>.png  only with export_png: the study's layout, for inspection

Sources are the official splits (train, val, test, train_extra); the protocol's splits are id lists over them.
The folder is built as ``<out>.partial`` in chunks of a few images, each recorded when written, so an interrupted
run continues where it stopped; the finished folder is renamed into place.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from .. import __version__, atomic, labels
from ..errors import ConfigError, DataError
from ..outputs import check_output_folder, check_partial
from ..parallel import default_workers, run_tasks
from . import png
from .layout import COARSE_FOLDER, FINE_FOLDER, find_frame_id
from .raw import RawFrame, RawIndex, count_notes, decode_member, is_stand_in, member_name, open_raw, scan
from .split_families import DEFAULT_FAMILY, get_family, labeled_splits, list_path, list_sha256, resolve_fractions
from .splits import fraction_name, study_split

FORMAT = "cityscapes-lab/prepared-v1"
CHUNK = 8  # images per task: small enough to lose little on a kill


def paper_size(width: int, height: int, factor: float = 0.2, multiple: int = 16) -> tuple[int, int]:
    """The study's target size: ``int(side * factor)`` rounded up to a multiple of 16 (2048x1024 -> 416x208)."""
    return tuple(-(-int(side * factor) // multiple) * multiple for side in (width, height))


@dataclass(frozen=True)
class Protocol:
    """How a protocol turns labelIds into class indices, and what it stores."""

    name: str
    label_scheme: str
    lut: np.ndarray  # labelId -> stored class index
    num_classes: int
    ignore_index: int | None
    description: str


PROTOCOLS = {
    "paper": Protocol("paper", "paper35", labels.LABELID_TO_PAPER, labels.PAPER_NUM_CLASSES, None,
                      "the Inconsistency-Masks study: 416x208, 35 indices, its exact splits"),
    "standard": Protocol("standard", "trainId19", labels.LABELID_TO_TRAINID, labels.NUM_TRAIN_CLASSES,
                         labels.IGNORE_INDEX, "the Cityscapes benchmark: 19 trainIds, 255 ignored, official splits"),
}


@dataclass(frozen=True)
class PrepareOptions:
    protocol: str = "paper"
    # paper protocol
    labeled_fraction: float = 0.1  # share of train kept labeled; the study's train_test_split(test_size=0.9)
    split_seed: int = 42  # the study's random_state
    # standard protocol
    size: tuple[int, int] | None = None  # (W, H) of a downscaled copy; None keeps the full resolution
    split_family: str | None = None  # the labeled subsets: cps, u2pl or seeded (split_families); None: cps
    fractions: tuple[str, ...] | None = None  # labeled subsets of train; None: every one the family has
    subset_seed: int = 0  # the seeded family's draw
    labeled_list: str | None = None  # a file naming the labeled train images (one per line)
    coarse: bool = False  # include train_extra with gtCoarse labels
    # both
    export_png: bool = False


@dataclass(frozen=True)
class PrepareResult:
    out: Path
    skipped: bool  # a complete folder was already there
    counts: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    split_family: str | None = None  # standard protocol: where train_labeled_* come from (cps, u2pl, seeded)


def _protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def resolve_options(options: PrepareOptions) -> PrepareOptions:
    """The options with the split family and its fractions filled in (what meta.json records), checked before
    anything is read: a family or fraction the protocol cannot make is a ConfigError."""
    _protocol(options.protocol)
    if options.protocol == "paper":
        if options.split_family is not None:
            raise ConfigError("--split-family applies to --protocol standard; the paper protocol uses the study's "
                              "own split (--labeled-fraction, --split-seed)")
        return options
    family = get_family(options.split_family or DEFAULT_FAMILY)
    if family.published and options.subset_seed != 0:
        raise ConfigError(f"--subset-seed applies to --split-family seeded; the {family.name} family is a fixed "
                          "published list")
    return replace(options, split_family=family.name,
                   fractions=resolve_fractions(family.name, options.fractions))


def _wanted_splits(options: PrepareOptions, index: RawIndex) -> dict[str, str | None]:
    """Official split -> annotation folder of its labels (None: images only)."""
    wanted: dict[str, str | None] = {"train": FINE_FOLDER, "val": FINE_FOLDER}
    if options.protocol == "standard":
        if "leftImg8bit/test" in index.dirs:
            wanted["test"] = None
        if options.coarse:
            if f"{COARSE_FOLDER}/train_extra" not in index.dirs or "leftImg8bit/train_extra" not in index.dirs:
                raise DataError(f"{index.root}: --coarse needs leftImg8bit/train_extra and gtCoarse/train_extra "
                                "(leftImg8bit_trainextra.zip, gtCoarse.zip); add them or drop --coarse")
            wanted["train_extra"] = COARSE_FOLDER
    return wanted


def _read_list(path: str, train_ids: set[str]) -> list[str]:
    """Image ids named in a list file (any line containing <city>_<seq>_<frame>, e.g. U2PL/UniMatch lists)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the labeled list ({exc.strerror}); check the path") from None
    chosen = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        frame = find_frame_id(line)
        if frame is None or str(frame) not in train_ids:
            raise DataError(f"{path}:{number}: {line.strip()!r} names no image of the train split; fix the line")
        chosen.append(str(frame))
    if not chosen:
        raise DataError(f"{path}: names no images; give one train image per line")
    return sorted(set(chosen))


def make_splits(options: PrepareOptions, ids: dict[str, list[str]], *, source: str = "the download",
                stand_in: bool = False) -> dict[str, list[str]]:
    """The protocol's split lists (each sorted) from the sorted ids of the official splits. ``source`` and
    ``stand_in`` only word the error when a published family's labeled image is missing."""
    options = resolve_options(options)
    if options.protocol == "paper":
        # The study lists file names <id>.png; with sorted names, train_test_split's parts A and B are:
        names = [f"{i}.png" for i in ids["train"]]
        labeled, unlabeled = study_split(names, round(1 - options.labeled_fraction, 12), options.split_seed,
                                         f"train images into labeled (--labeled-fraction {options.labeled_fraction:g})"
                                         " and unlabeled")
        val_names = [f"{i}.png" for i in ids["val"]]
        val, test = study_split(val_names, 0.5, options.split_seed, "val images into val and test")
        strip = lambda part: sorted(name[:-4] for name in part)  # noqa: E731
        return {"train_full": list(ids["train"]), "train_labeled": strip(labeled),
                "train_unlabeled": strip(unlabeled), "val": strip(val), "test": strip(test)}
    splits = {name: list(values) for name, values in ids.items()}
    splits.update(labeled_splits(options.split_family, options.fractions, ids["train"], options.subset_seed,
                                 source=source, stand_in=stand_in))
    if options.labeled_list:
        labeled = _read_list(options.labeled_list, set(ids["train"]))
        chosen = set(labeled)
        splits["train_labeled"] = labeled
        splits["train_unlabeled"] = [i for i in ids["train"] if i not in chosen]
    return splits


@dataclass(frozen=True)
class _Chunk:
    source: str
    number: int
    rows: tuple[int, ...]
    frames: tuple[RawFrame, ...]
    instances: bool  # also store the instance ids
    containers: dict  # relpath -> container, for this chunk's files only
    arrays: str  # the arrays folder
    size: tuple[int, int]
    lut: tuple[int, ...]
    export: dict  # image id -> export folder (empty without export_png)


def _load_frame(chunk: _Chunk, item: RawFrame, lut: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Decode, check, relabel and resize one frame: (H, W, 3) uint8 image, (H, W) uint8 label or None, and
    (H, W) uint16 instance ids or None."""
    def decode(relpath: str) -> np.ndarray:
        return decode_member(chunk.containers[relpath], relpath)

    width, height = chunk.size
    image = decode(item.image)[..., :3]
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if item.label is None:
        return image, None, None
    label = decode(item.label)
    if label.ndim != 2 or int(label.max()) >= labels.NUM_LABEL_IDS:
        bad = int(label.max()) if label.ndim == 2 else f"{label.ndim}-channel data"
        raise DataError(f"{member_name(chunk.containers[item.label], item.label)}: label value {bad} is out of range (labelIds are "
                        f"0..{labels.NUM_LABEL_IDS - 1}); use the official *_labelIds.png files, not trainIds or "
                        "colour images")
    if label.shape != (height, width):  # nearest-neighbour picks pixels, so it commutes with the relabelling
        label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    instances = None
    if chunk.instances:
        instances = decode(item.instance).astype(np.uint16)
        if instances.shape != (height, width):
            instances = cv2.resize(instances, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, lut[label], instances


def _prepare_chunk(chunk: _Chunk) -> int:
    """Worker: fill the chunk's rows of the arrays (and export PNGs); returns the number of frames."""
    cv2.setNumThreads(1)  # the pool already uses every core
    lut = np.asarray(chunk.lut, dtype=np.uint8)
    opened: dict[str, np.ndarray] = {}

    def stored(kind: str) -> np.ndarray:
        if kind not in opened:
            opened[kind] = np.load(f"{chunk.arrays}/{chunk.source}.{kind}.npy", mmap_mode="r+")
        return opened[kind]

    for row, item in zip(chunk.rows, chunk.frames):
        image, label, instances = _load_frame(chunk, item, lut)
        stored("images")[row] = image
        if label is not None:
            stored("labels")[row] = label
        if instances is not None:
            stored("instances")[row] = instances
        folder = chunk.export.get(str(item.frame))
        if folder:
            for sub, array in (("images", image), ("masks", label)):
                if array is not None:
                    target = Path(folder) / sub / f"{item.frame}.png"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    atomic.write_bytes(target, png.encode(array))
    for values in opened.values():
        values.flush()
    return len(chunk.frames)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "cityscapes-lab": __version__}
    for name in ("numpy", "opencv-python-headless", "pillow", "cityscapesscripts", "pyspng-seunglab"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _export_folders(options: PrepareOptions, splits: dict[str, list[str]], partial: Path) -> dict[str, str]:
    """Image id -> the folder its PNGs go to, one leaf split per image (train_full and subsets would repeat)."""
    if not options.export_png:
        return {}
    leaves = (("train_labeled", "train_unlabeled", "val", "test") if options.protocol == "paper"
              else ("train", "val", "test", "train_extra"))
    return {i: str(partial / leaf) for leaf in leaves for i in splits.get(leaf, [])}


@dataclass(frozen=True)
class _Plan:
    """What a prepare run makes, fixed before any pixel is written."""

    index: RawIndex
    frames: dict[str, list[RawFrame]]
    ids: dict[str, list[str]]
    splits: dict[str, list[str]]
    size: tuple[int, int]  # stored (width, height)
    original_size: tuple[int, int]
    instances: dict[str, bool]  # sources whose instance ids are kept (for iIoU)


def _plan(raw: Path, options: PrepareOptions) -> _Plan:
    """Validate the download and decide sizes and splits (raises before anything is written)."""
    index = open_raw(raw)
    frames = scan(index, _wanted_splits(options, index))
    ids = {split: [str(item.frame) for item in items] for split, items in frames.items()}
    header = png.parse_header(index.read(frames["train"][0].image)[:33])
    original = (header.width, header.height)
    if options.size and (options.size[0] > original[0] or options.size[1] > original[1]):
        raise ConfigError(f"--size {options.size[0]}x{options.size[1]} is larger than the images of {raw} "
                          f"({original[0]}x{original[1]}); a downscaled copy must be at most the original size")
    size = paper_size(*original) if options.protocol == "paper" else tuple(options.size or original)
    # Instance ids (for iIoU) are kept for the official val split, where every frame has them.
    instances = {source: source == "val" and all(item.instance for item in items) for source, items in frames.items()}
    splits = make_splits(options, ids, source=str(raw), stand_in=is_stand_in(index))
    return _Plan(index, frames, ids, splits, size, original, instances)


def is_prepared(folder: Path) -> bool:
    """Whether ``folder`` is a complete prepared folder (its meta.json names this format)."""
    try:
        return json.loads((Path(folder) / "meta.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _open_partial(partial: Path, fingerprint: dict) -> None:
    """Reuse an interrupted run's folder if it was making the same thing; else start it over."""
    fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from plan.json
    plan_file = partial / "plan.json"
    if partial.exists() and (not plan_file.exists() or json.loads(plan_file.read_text()) != fingerprint):
        shutil.rmtree(partial)
    (partial / "done").mkdir(parents=True, exist_ok=True)
    (partial / "arrays").mkdir(exist_ok=True)
    atomic.write_json(plan_file, fingerprint)


def _allocate(arrays: Path, plan: _Plan) -> None:
    """Create the (zero-filled) array files that the workers fill in."""
    width, height = plan.size
    for source, items in plan.frames.items():
        shapes = {"images": ((len(items), height, width, 3), np.uint8)}
        if items[0].label is not None:
            shapes["labels"] = ((len(items), height, width), np.uint8)
        if plan.instances[source]:
            shapes["instances"] = ((len(items), height, width), np.uint16)
        for kind, (shape, dtype) in shapes.items():
            path = arrays / f"{source}.{kind}.npy"
            if not path.exists():
                tmp = path.with_name(path.name + ".tmp")
                np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape).flush()
                tmp.replace(path)


def _chunks(plan: _Plan, partial: Path, lut: np.ndarray, export: dict[str, str]) -> list[_Chunk]:
    """The chunks of frames still to do (a finished chunk has a marker in ``done/``)."""
    chunks = []
    for source, items in plan.frames.items():
        for number, start in enumerate(range(0, len(items), CHUNK)):
            if (partial / "done" / f"{source}-{number}").exists():
                continue
            part = items[start:start + CHUNK]
            files = [f for item in part for f in (item.image, item.label) if f]
            if plan.instances[source]:
                files += [item.instance for item in part]
            chunks.append(_Chunk(source, number, tuple(range(start, start + len(part))), tuple(part),
                                 plan.instances[source], {f: plan.index.files[f] for f in files},
                                 str(partial / "arrays"), plan.size, tuple(int(v) for v in lut),
                                 {str(i.frame): export[str(i.frame)] for i in part if str(i.frame) in export}))
    return chunks


def _split_lists(options: PrepareOptions) -> dict[str, dict[str, str]]:
    """Split name -> the shipped list it was taken from and that file's sha256 (published families only)."""
    if options.protocol != "standard" or not get_family(options.split_family).published:
        return {}
    return {f"train_labeled_{fraction_name(f)}": {"file": list_path(options.split_family, f),
                                                  "sha256": list_sha256(options.split_family, f)}
            for f in options.fractions}


def _meta(plan: _Plan, protocol: Protocol, options: PrepareOptions, raw: Path) -> dict:
    return {
        "format": FORMAT,
        "protocol": protocol.name,
        "description": protocol.description,
        "label_scheme": protocol.label_scheme,
        "num_classes": protocol.num_classes,
        "ignore_index": protocol.ignore_index,
        "size": list(plan.size),
        "source": {"path": str(Path(raw).resolve()), "kind": "zips" if plan.index.zips else "folders",
                   "stand_in": is_stand_in(plan.index), "original_size": list(plan.original_size)},
        "sources": {source: {"ids": plan.ids[source], "labels": items[0].label is not None,
                             "instances": plan.instances[source]} for source, items in plan.frames.items()},
        "counts": {name: len(values) for name, values in plan.splits.items()},
        "split_family": options.split_family,  # cps, u2pl, seeded; None for the paper protocol
        "split_lists": _split_lists(options),
        "options": asdict(options),
        "notes": count_notes(plan.frames),
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def prepare(raw: Path, out: Path, options: PrepareOptions, *, workers: int | None = None,
            force: bool = False) -> PrepareResult:
    """Prepare the raw download at ``raw`` into ``out`` for ``options.protocol``.

    Validates the download before writing anything; raises DataError/ConfigError naming the file and the fix.
    A complete ``out`` is left alone (``skipped``) unless ``force``.
    """
    started = time.perf_counter()
    protocol = _protocol(options.protocol)
    options = resolve_options(options)
    out = Path(out)
    check_output_folder(out, what="a prepared folder", ours=is_prepared, inputs=[raw])
    if is_prepared(out) and not force:
        return PrepareResult(out, skipped=True)
    plan = _plan(raw, options)
    partial = atomic.partial_path(out)
    check_partial(partial, out, "plan.json")
    _open_partial(partial, {"format": FORMAT, "raw": str(Path(raw).resolve()), "options": asdict(options),
                            "size": list(plan.size), "ids": plan.ids})
    _allocate(partial / "arrays", plan)
    chunks = _chunks(plan, partial, protocol.lut, _export_folders(options, plan.splits, partial))
    try:
        for chunk, _ in run_tasks(_prepare_chunk, chunks, workers=workers or default_workers(),
                                  desc=f"prepare ({protocol.name})", units=lambda c: len(c.frames),
                                  total_units=sum(len(c.frames) for c in chunks)):
            (partial / "done" / f"{chunk.source}-{chunk.number}").touch()
    except DataError:
        shutil.rmtree(partial, ignore_errors=True)  # the input is at fault: leave nothing behind
        raise
    meta = _meta(plan, protocol, options, raw)
    atomic.write_json(partial / "splits.json", plan.splits)
    atomic.write_json(partial / "meta.json", meta)
    shutil.rmtree(partial / "done")
    (partial / "plan.json").unlink()
    atomic.publish_folder(partial, out)
    return PrepareResult(out, skipped=False, counts=meta["counts"], notes=tuple(meta["notes"]),
                         seconds=time.perf_counter() - started, split_family=options.split_family)
