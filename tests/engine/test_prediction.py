"""`predict` (images, folders, videos) writes submission files that `evaluate` reads; `zoo eval` scores a model
on a raw split and reports the time per image."""

import json

import cv2
import numpy as np
import pytest
import torch

from cityscapes_lab.cli import main
from cityscapes_lab.data import png
from cityscapes_lab.engine.checkpoint import save_checkpoint
from cityscapes_lab.metrics.folders import evaluate_folders
from cityscapes_lab.models import build_model, model_spec


@pytest.fixture(scope="module")
def unet_checkpoint(tmp_path_factory):
    """One of our checkpoints (as the study writes them): it names its model, classes and input size."""
    torch.manual_seed(0)
    model = build_model("unet_paper", 35, alpha=0.5)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {"model_name": "unet_paper", "model_options": {"alpha": 0.5}, "num_classes": 35,
                           "protocol": "paper", "input_size": [112, 64], "state_dict": model.state_dict()})
    return path


def run(args, capsys):
    with pytest.raises(SystemExit) as exited:
        main(args)
    captured = capsys.readouterr()
    assert exited.value.code == 0, captured.err
    return captured.out


def test_predict_writes_submission_files_that_evaluate_reads(raw_small, unet_checkpoint, tmp_path, capsys):
    out = tmp_path / "pred"
    printed = run(["predict", "--model", "unet_paper", "--weights", str(unet_checkpoint),
                   str(raw_small / "leftImg8bit" / "val"), "--out", str(out)], capsys)
    assert "wrote 10 predictions" in printed
    files = sorted((out / "labelIds").glob("*.png"))
    assert len(files) == 10 and all(f.stem.endswith("_leftImg8bit") for f in files)
    label_ids = png.decode(files[0].read_bytes())
    assert label_ids.shape == (256, 512) and label_ids.dtype == np.uint8 and label_ids.max() <= 33
    colour, blend = (png.decode((out / sub / files[0].name).read_bytes()) for sub in ("color", "overlay"))
    assert colour.shape == blend.shape == (256, 512, 3)
    result = evaluate_folders(out / "labelIds", raw_small / "gtFine" / "val", workers=1)
    assert result.images == 10 and 0 <= result.scores.miou <= 1


def test_predict_reads_videos_frame_by_frame(unet_checkpoint, tmp_path, capsys):
    video = tmp_path / "drive.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 64))
    for k in range(3):
        writer.write(np.full((64, 128, 3), 40 * k, np.uint8))
    writer.release()
    run(["predict", "--model", "unet_paper", "--weights", str(unet_checkpoint), str(video), "--out",
         str(tmp_path / "out"), "--no-overlay"], capsys)
    assert sorted(p.name for p in (tmp_path / "out" / "labelIds").iterdir()) == [
        "drive_000000.png", "drive_000001.png", "drive_000002.png"]
    assert not (tmp_path / "out" / "overlay").exists()


def test_zoo_eval_on_a_raw_split(raw_small, tmp_path, capsys):
    torch.manual_seed(0)
    options = model_spec("hrnet_w48_ocr").test_options
    model = build_model("hrnet_w48_ocr", 19, **options)
    save_checkpoint(tmp_path / "hrnet.pt", {"model_name": "hrnet_w48_ocr", "model_options": options,
                                            "num_classes": 19, "state_dict": model.state_dict()})
    printed = run(["zoo", "eval", "hrnet_w48_ocr", "--weights", str(tmp_path / "hrnet.pt"), "--data", str(raw_small),
                   "--protocol", "slide", "--limit", "2", "--json", str(tmp_path / "scores.json")], capsys)
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["images"] == 2 and scores["protocol"] == "slide" and scores["seconds_per_image"] > 0
    assert 0 <= scores["mIoU"] <= 1 and "class_IoU" in scores and "s per image" in printed


def test_zoo_list_names_every_published_number(capsys):
    printed = run(["zoo", "list"], capsys)
    for text in ("81.60", "82.27", "84.41", "86.42", "73.31", "77.04", "84.83", "SERNet-Former: not runnable",
                 "hrnet_ocr_cs_8162_torch11.pth", "upernet_internimage_xl_512x1024_160k_mapillary2cityscapes.pth"):
        assert text in printed
