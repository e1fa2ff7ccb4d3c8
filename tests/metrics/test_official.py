"""The official scores: hand-made confusion examples, and parity with cityscapesscripts' evaluator."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from cityscapes_lab.cli import main
from cityscapes_lab.data import png
from cityscapes_lab.errors import DataError
from cityscapes_lab.labels import NAME_TO_LABEL, TRAIN_CLASS_NAMES
from cityscapes_lab.metrics.folders import evaluate_folders
from cityscapes_lab.metrics.official import ConfusionMatrix, _pair_histogram, official_scores


def ids(*names: str) -> np.ndarray:
    return np.array([NAME_TO_LABEL[name].id for name in names])


def test_iou_counts_ignored_predictions_as_misses_but_not_as_false_positives():
    gt = ids("road", "road", "road", "road", "sidewalk", "unlabeled", "parking")
    pred = ids("road", "road", "ego vehicle", "sidewalk", "sidewalk", "road", "sidewalk")
    confusion = ConfusionMatrix()
    confusion.add(pred, gt)
    scores = official_scores(confusion)
    # road: TP 2, FN 2 (one predicted as ignored, one as sidewalk), FP 0 (the ignored-gt pixel does not count)
    assert scores.class_iou["road"] == pytest.approx(2 / 4)
    # sidewalk: TP 1, FP 1 (a road pixel), FN 0
    assert scores.class_iou["sidewalk"] == pytest.approx(1 / 2)
    assert math.isnan(scores.class_iou["car"])  # absent from ground truth and prediction
    assert scores.miou == pytest.approx((0.5 + 0.5) / 2)
    # flat: TP 4 (road/sidewalk confusions stay inside the category), FN 1 (ego vehicle), FP 0
    assert scores.category_iou["flat"] == pytest.approx(4 / 5)


@pytest.mark.parametrize("kind", ["runs", "noise", "strided"])
def test_pair_histogram_counts_every_pair(kind):
    # both code paths: long runs (label maps) are counted run by run, noise pixel by pixel
    rng = np.random.default_rng(1)
    if kind == "noise":
        first, second = rng.integers(0, 256, (2, 64, 96), dtype=np.uint8)
    else:
        first = np.repeat(rng.integers(0, 34, (64, 6), dtype=np.uint8), 16, axis=1)
        second = first.copy()
        second[10:30, 20:50] = 7
        second[0, 0], second[-1, -1] = 255, 0  # runs at both ends
    if kind == "strided":
        first, second = first[:, ::2], second[:, ::2]
    expected = np.zeros((256, 256), dtype=np.int64)
    np.add.at(expected, (first.ravel(), second.ravel()), 1)
    assert np.array_equal(_pair_histogram(first, second), expected)


def test_merge_equals_adding_everything_at_once():
    rng = np.random.default_rng(0)
    pred, gt = rng.integers(0, 34, (2, 50)), rng.integers(0, 34, (2, 50))
    whole, a, b = ConfusionMatrix(), ConfusionMatrix(), ConfusionMatrix()
    whole.add(pred, gt)
    a.add(pred[0], gt[0])
    b.add(pred[1], gt[1])
    assert np.array_equal(whole.counts, a.merge(b).counts)


def noisy_predictions(raw: Path, out: Path, seed: int = 0, split: str = "val") -> None:
    """Ground truth with 20% noise (every labelId, caravan and trailer included) and a band of false cars;
    train and bicycle are never predicted."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for gt in sorted(raw.glob(f"gtFine/{split}/*/*_gtFine_labelIds.png")):
        labels = png.decode(gt.read_bytes())
        noise = rng.random(labels.shape) < 0.2
        labels = np.where(noise, rng.integers(0, 34, labels.shape), labels).astype(np.uint8)
        labels[:20] = NAME_TO_LABEL["car"].id
        labels[np.isin(labels, ids("train", "bicycle"))] = NAME_TO_LABEL["bus"].id
        (out / gt.name.replace("_gtFine_labelIds", "_pred")).write_bytes(png.encode(labels))


def official_evaluator(raw: Path, predictions: Path, tmp: Path, split: str = "val") -> dict:
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as evaluator

    args = evaluator.args
    args.quiet, args.evalInstLevelScore, args.JSONOutput = True, True, False
    args.exportFile = str(tmp / "official.json")
    args.predictionPath, args.predictionWalk = str(predictions), None
    gts = sorted(map(str, raw.glob(f"gtFine/{split}/*/*_gtFine_labelIds.png")))
    return evaluator.evaluateImgLists([evaluator.getPrediction(args, gt) for gt in gts], gts, args)


def same(ours: float, theirs: float) -> bool:
    return (math.isnan(ours) and math.isnan(theirs)) or abs(ours - theirs) <= 1e-6


@pytest.mark.parametrize("split", ["val", "test"])
def test_parity_with_cityscapesscripts(raw_small, tmp_path, split):
    """val: real scenes; test: ground truth with only the void borders, so every evaluated class is absent."""
    predictions = tmp_path / "pred"
    noisy_predictions(raw_small, predictions, split=split)
    ours = evaluate_folders(predictions, raw_small / "gtFine" / split, workers=2)
    theirs = official_evaluator(raw_small, predictions, tmp_path, split)
    assert ours.images == (10 if split == "val" else 3) and ours.with_instances
    for name in TRAIN_CLASS_NAMES:
        assert same(ours.scores.class_iou[name], theirs["classScores"][name]), name
        assert same(ours.scores.class_iiou[name], theirs["classInstScores"][name]), name
    for category, value in theirs["categoryScores"].items():
        assert same(ours.scores.category_iou.get(category, math.nan), value), category
    for category, value in theirs["categoryInstScores"].items():
        assert same(ours.scores.category_iiou.get(category, math.nan), value), category
    assert same(ours.scores.miou, theirs["averageScoreClasses"])
    assert same(ours.scores.iiou, theirs["averageScoreInstClasses"])
    assert same(ours.scores.category_miou, theirs["averageScoreCategories"])
    assert same(ours.scores.category_iiou_mean, theirs["averageScoreInstCategories"])
    if split == "test":  # no evaluated class in the ground truth: predicted or not, nothing is scored
        assert all(math.isnan(v) for v in ours.scores.class_iou.values()) and math.isnan(ours.scores.miou)


def test_evaluate_command_writes_the_json(raw_small, tmp_path, capsys):
    predictions = tmp_path / "pred"
    noisy_predictions(raw_small, predictions, seed=1)
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "--pred", str(predictions), "--gt", str(raw_small / "gtFine" / "val"), "--json",
              str(tmp_path / "scores.json"), "--workers", "1"])
    assert exited.value.code == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert {"mIoU", "iIoU", "category_mIoU", "category_iIoU", "class_IoU", "class_iIoU"} <= set(scores)
    assert set(scores["class_IoU"]) == set(TRAIN_CLASS_NAMES) and 0 < scores["mIoU"] < 1
    assert "mIoU" in capsys.readouterr().out


def test_missing_prediction_is_named(raw_small, tmp_path):
    predictions = tmp_path / "pred"
    noisy_predictions(raw_small, predictions)
    victim = sorted(predictions.iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match="holds no prediction for"):
        evaluate_folders(predictions, raw_small / "gtFine" / "val", workers=1)
    shutil.copy(sorted(predictions.iterdir())[0], predictions / "copy_of_first.png")
