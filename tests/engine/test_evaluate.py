"""Scoring a split with both families, at the prepared and at the original resolution, and the predictions
written in the official submission format."""

import cv2
import numpy as np
import pytest

from cityscapes_lab import load_prepared
from cityscapes_lab.data import png
from cityscapes_lab.data.prepare import PrepareOptions, prepare
from cityscapes_lab.engine.evaluate import label_ids_of, score_full_resolution, score_split, write_predictions
from cityscapes_lab.metrics.folders import evaluate_folders


@pytest.fixture(scope="module")
def paper(raw_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper-eval") / "prepared"
    prepare(raw_small, out, PrepareOptions(protocol="paper"), workers=1)
    return load_prepared(out)


def test_perfect_predictions_score_one_in_both_families(paper):
    split = paper.split("val")
    scores = score_split(np.asarray(split.labels), split, "paper")
    assert scores.paper.miou == pytest.approx(1.0) and scores.official.miou == pytest.approx(1.0)
    assert scores.official.iiou == pytest.approx(1.0)  # instance ids are kept for the val split


def test_full_resolution_scores_equal_the_evaluator_on_upsampled_predictions(paper, raw_small, tmp_path):
    split = paper.split("val")
    rng = np.random.default_rng(0)
    predictions = np.asarray(split.labels).copy()
    predictions[:, :10] = rng.integers(0, 35, predictions[:, :10].shape)
    ours = score_full_resolution(predictions, split.ids, "paper", raw_small)
    write_predictions(tmp_path / "pred", predictions, split.ids, "paper", (512, 256))
    files = sorted((tmp_path / "pred").iterdir())
    assert len(files) == len(split) and png.decode(files[0].read_bytes()).shape == (256, 512)
    expected = cv2.resize(label_ids_of(predictions[0], "paper"), (512, 256), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(png.decode((tmp_path / "pred" / f"{split.ids[0]}_pred_labelIds.png").read_bytes()), expected)
    # the same predictions scored by `evaluate` on the ground truth of the same 5 val frames
    gt = tmp_path / "gt"
    gt.mkdir()
    for image_id in split.ids:
        city = image_id.split("_")[0]
        for kind in ("labelIds", "instanceIds"):
            name = f"{image_id}_gtFine_{kind}.png"
            (gt / name).write_bytes((raw_small / "gtFine" / "val" / city / name).read_bytes())
    theirs = evaluate_folders(tmp_path / "pred", gt, workers=1).scores
    assert ours.miou == pytest.approx(theirs.miou, abs=1e-12) and ours.iiou == pytest.approx(theirs.iiou, abs=1e-12)


def test_predictions_in_train_ids_get_a_warning_with_the_conversion(raw_small, tmp_path, capsys):
    from cityscapes_lab import labels
    from cityscapes_lab.data import png
    from oneline import run_cli

    gt = raw_small / "gtFine" / "val"
    for kind, convert in (("label_ids", lambda ids: ids),
                          ("train_ids", lambda ids: np.where(labels.LABELID_TO_TRAINID[ids] == 255, 0,
                                                             labels.LABELID_TO_TRAINID[ids]).astype(np.uint8))):
        folder = tmp_path / kind
        folder.mkdir()
        for label in gt.glob("*/*_labelIds.png"):
            (folder / label.name).write_bytes(png.encode(convert(png.decode(label.read_bytes()))))
        code, printed, err = run_cli(["evaluate", "--pred", folder, "--gt", gt, "--workers", "1"], capsys)
        assert code == 0, err
        if kind == "label_ids":
            assert "mIoU 1.0000" in printed and err == ""
        else:
            assert "mIoU 1.0000" not in printed
            assert err.count("\n") == 1 and err.startswith(f"warning: {folder}: the predictions look like trainIds")
            assert "TRAINID_TO_LABELID" in err
