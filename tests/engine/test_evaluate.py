"""Scoring a split with both families, at the prepared and at the original resolution, and the predictions
written in the official submission format."""

import cv2
import numpy as np
import pytest

from cityscapes_lab import load_prepared
from cityscapes_lab.data import png
from cityscapes_lab.data.prepare import PrepareOptions, prepare
from cityscapes_lab.engine.evaluate import (FullResolutionScorer, SplitScorer, label_ids_of, score_full_resolution,
                                            score_split, write_predictions)
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


def test_scores_taken_chunk_by_chunk_equal_those_of_the_whole_split(paper, raw_small):
    """What ``score_model`` does to keep memory flat: uneven chunks give exactly the whole split's scores."""
    split = paper.split("val")
    rng = np.random.default_rng(1)
    predictions = np.asarray(split.labels).copy()
    predictions[:, ::3] = rng.integers(0, 35, predictions[:, ::3].shape)
    whole = score_split(predictions, split, "paper", chunk=len(split))
    scorer, full = SplitScorer("val", "paper"), FullResolutionScorer(raw_small, "paper")
    for rows in (slice(0, 2), slice(2, 3), slice(3, None)):
        scorer.add(predictions[rows], np.asarray(split.labels[rows]), np.asarray(split.instances[rows]))
        full.add(predictions[rows], split.ids[rows])
    chunked = scorer.result()
    assert whole.official.miou < 1
    np.testing.assert_equal(chunked.summary(), whole.summary())  # (NaN where a class never occurs, in both)
    np.testing.assert_equal(chunked.paper.iou, whole.paper.iou)
    np.testing.assert_equal(vars(full.result()), vars(score_full_resolution(predictions, split.ids, "paper",
                                                                            raw_small)))


def test_predicted_chunks_cover_the_split_in_order():
    import torch

    from cityscapes_lab.engine.inference import InferenceProtocol, predict, predicted_chunks
    from cityscapes_lab.engine.runtime import Runtime
    from cityscapes_lab.models import build_model

    torch.manual_seed(0)
    model = build_model("unet_paper", num_classes=5)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    runtime = Runtime.cpu(eval_batch_size=2)
    chunks = list(predicted_chunks(model, images, runtime, chunk=2))
    assert [rows for rows, _ in chunks] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert np.array_equal(np.concatenate([p for _, p in chunks]), predict(model, images, runtime))
    slide = InferenceProtocol("slide", (16, 16), (12, 12))
    assert [p.shape for _, p in predicted_chunks(model, images, runtime, slide, 5, chunk=3)] == [(3, 32, 48),
                                                                                              (2, 32, 48)]


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
