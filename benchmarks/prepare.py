"""Preparing raw data for the paper protocol: cityscapes-lab against the study's scripts 00 + 01.

The baseline does what the study's scripts do, serially with OpenCV: read each 2048x1024 image and its labelIds
(3-channel, as the study), resize (bilinear / nearest), shift the label ids, write both as PNG; then the split
script reads every PNG again and writes it into its split folder. cityscapes-lab decodes each file once (libspng),
in parallel, and writes compact arrays. Both run in one process, alternating, on the same generated data.

    python benchmarks/prepare.py [--train 100 --val 40 --rounds 2 --workers 2] [--no-record]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).parent))
from results import benchmark_arguments, markdown_table, record  # noqa: E402

from cityscapes_lab import load_prepared  # noqa: E402
from cityscapes_lab.data.prepare import PrepareOptions, paper_size, prepare  # noqa: E402
from cityscapes_lab.data.splits import study_split  # noqa: E402
from cityscapes_lab.data.synth import SynthOptions, synthesize  # noqa: E402


def study_scripts(raw: Path, base: Path) -> int:
    """Scripts 00 (resize and relabel into train_full/ and val_test/) and 01 (split into folders)."""
    count = 0
    for split, target in (("train", "train_full"), ("val", "val_test")):
        for sub in ("images", "masks"):
            (base / target / sub).mkdir(parents=True, exist_ok=True)
        for image_path in sorted((raw / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
            name = image_path.name.replace("_leftImg8bit", "")
            label_path = raw / "gtFine" / split / image_path.parent.name / name.replace(".png", "_gtFine_labelIds.png")
            image = cv2.imread(str(image_path))
            mask = cv2.imread(str(label_path))  # the study reads the mask as 3 channels
            size = paper_size(image.shape[1], image.shape[0])
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
            mask[mask > 0] += 1
            cv2.imwrite(str(base / target / "images" / name), image)
            cv2.imwrite(str(base / target / "masks" / name), mask)
            count += 1
    for source, parts in (("train_full", ("train_labeled", "train_unlabeled", 0.9)), ("val_test", ("val", "test", 0.5))):
        names = sorted(p.name for p in (base / source / "images").iterdir())
        a, b = study_split(names, parts[2], 42)
        for target, members in ((parts[0], a), (parts[1], b)):
            for sub in ("images", "masks"):
                (base / target / sub).mkdir(parents=True, exist_ok=True)
                for name in members:
                    cv2.imwrite(str(base / target / sub / name), cv2.imread(str(base / source / sub / name)))
    return count


def main() -> None:
    parser = benchmark_arguments(__doc__, cache=True)
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    raw = args.cache / f"raw-2048x1024-{args.train}-{args.val}"
    synthesize(raw, SynthOptions(counts={"train": args.train, "val": args.val, "test": 0, "train_extra": 0}))
    files = list(raw.rglob("*.png"))
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    for path in files:  # warm the page cache so both sides read from memory
        path.read_bytes()
    n = args.train + args.val

    timings: dict[str, list[float]] = {"study scripts 00+01 (OpenCV, serial)": [], "cityscapes-lab prepare": []}
    load_times = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            out = Path(tmp) / f"study{r}"
            start = time.perf_counter()
            study_scripts(raw, out)
            timings["study scripts 00+01 (OpenCV, serial)"].append(time.perf_counter() - start)
            shutil.rmtree(out)
            out = Path(tmp) / f"lab{r}"
            start = time.perf_counter()
            prepare(raw, out, PrepareOptions(protocol="paper"), workers=args.workers)
            timings["cityscapes-lab prepare"].append(time.perf_counter() - start)
            start = time.perf_counter()
            data = load_prepared(out, in_memory=True)
            arrays = [data.split(name) for name in data.splits]
            load_times.append(time.perf_counter() - start)
            assert sum(len(a) for a in arrays) > 0
            shutil.rmtree(out)

    baseline = statistics.median(timings["study scripts 00+01 (OpenCV, serial)"])
    rows = []
    for name, values in timings.items():
        seconds = statistics.median(values)
        rows.append([name, f"{seconds:.2f}", f"{n / seconds:.1f}", f"{baseline / seconds:.2f}x"])
    table = markdown_table(["pipeline", "seconds (median)", "images/s", "speed vs study"], rows)
    per_image = statistics.median(load_times) / n
    record("prepare: paper protocol from generated 2048x1024 PNGs", table, [
        f"{n} image+label pairs ({args.train} train, {args.val} val), {megabytes / n:.1f} MB per pair on disk, "
        f"files in the page cache; median of {args.rounds} alternating rounds; --workers {args.workers}.",
        f"load_prepared(in_memory=True) and every split as arrays: {statistics.median(load_times):.3f} s "
        f"({per_image * 1e3:.2f} ms per image; the 3475-image paper dataset would take about "
        f"{per_image * 3475:.1f} s at this rate).",
    ], save=not args.no_record)


if __name__ == "__main__":
    main()
