"""Official evaluation: `cityscapes-lab evaluate` against cityscapesscripts' evaluator, same files, one run.

Generates (once, cached in .bench/) 100 stand-in val frames at 2048x1024 with instance ids, writes noisy
predictions, then times both evaluators (iIoU on) alternately and checks that their scores agree to 1e-6.

    python benchmarks/evaluate.py [--images 100 --rounds 2 --workers 2] [--no-record]
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results import benchmark_arguments, markdown_table, record  # noqa: E402

from cityscapes_lab.data import png  # noqa: E402
from cityscapes_lab.data.synth import SynthOptions, synthesize  # noqa: E402
from cityscapes_lab.metrics.folders import evaluate_folders  # noqa: E402


def make_predictions(raw: Path, out: Path) -> None:
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    for gt in sorted(raw.glob("gtFine/val/*/*_gtFine_labelIds.png")):
        target = out / gt.name.replace("_gtFine_labelIds", "_pred")
        if target.exists():
            continue
        # like a network's output: the ground truth at 1/8 resolution (blurred boundaries, lost small
        # objects) with some blobs of wrong classes
        labels = png.decode(gt.read_bytes())
        height, width = labels.shape
        coarse = cv2.resize(labels[4::8, 4::8], (width, height), interpolation=cv2.INTER_NEAREST)
        for _ in range(12):
            x, y = int(rng.integers(0, width - 200)), int(rng.integers(0, height - 100))
            cv2.ellipse(coarse, (x + 100, y + 50), (int(rng.integers(20, 100)), int(rng.integers(10, 50))), 0, 0,
                        360, int(rng.integers(0, 34)), -1)
        target.write_bytes(png.encode(coarse))


def official(raw: Path, predictions: Path) -> dict:
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as evaluator

    args = evaluator.args
    args.quiet, args.evalInstLevelScore, args.JSONOutput = True, True, False
    args.predictionPath, args.predictionWalk = str(predictions), None
    gts = sorted(map(str, raw.glob("gtFine/val/*/*_gtFine_labelIds.png")))
    return evaluator.evaluateImgLists([evaluator.getPrediction(args, g) for g in gts], gts, args)


def main() -> None:
    parser = benchmark_arguments(__doc__, cache=True)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    raw = args.cache / f"eval-2048x1024-{args.images}"
    synthesize(raw, SynthOptions(counts={"train": 0, "val": args.images, "test": 0, "train_extra": 0}, seed=11))
    predictions = raw.parent / f"{raw.name}-pred"
    make_predictions(raw, predictions)
    for path in list(raw.rglob("*.png")) + list(predictions.glob("*.png")):
        path.read_bytes()  # warm the page cache for both
    times = {"cityscapesscripts 2.3 evaluator (numpy path)": [], "cityscapes-lab evaluate": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        theirs = official(raw, predictions)
        times["cityscapesscripts 2.3 evaluator (numpy path)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        ours = evaluate_folders(predictions, raw / "gtFine" / "val", workers=args.workers)
        times["cityscapes-lab evaluate"].append(time.perf_counter() - start)
    worst = max(abs(ours.scores.class_iou[k] - v) for k, v in theirs["classScores"].items()
                if k in ours.scores.class_iou and not math.isnan(v))
    worst = max(worst, abs(ours.scores.iiou - theirs["averageScoreInstClasses"]),
                abs(ours.scores.miou - theirs["averageScoreClasses"]))
    baseline = statistics.median(times["cityscapesscripts 2.3 evaluator (numpy path)"])
    rows = [[name, f"{statistics.median(v):.2f}", f"{statistics.median(v) / args.images * 1e3:.1f}",
             f"{baseline / statistics.median(v):.2f}x"] for name, v in times.items()]
    record("evaluate: official pixel-level scores, 2048x1024, iIoU on",
           markdown_table(["evaluator", "seconds (median)", "ms per image", "speed vs cityscapesscripts"], rows),
           [f"{args.images} generated val frames with instance ids, predictions = the ground truth at 1/8 resolution plus wrong blobs; "
            f"files in the page cache; median of {args.rounds} alternating rounds; --workers {args.workers}.",
            f"largest difference between the two (class IoU, mIoU, iIoU): {worst:.2e}; "
            f"mIoU {ours.scores.miou:.6f}, iIoU {ours.scores.iiou:.6f}.",
            f"cityscapesscripts' optional Cython helper installed: "
            f"{__import__('cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling', fromlist=['x']).CSUPPORT}."],
           save=not args.no_record)


if __name__ == "__main__":
    os.environ.setdefault("CITYSCAPES_DATASET", str(Path(__file__).parents[1] / ".bench"))
    main()
