"""`predict` (images, folders, videos) writes submission files that `evaluate` reads; `zoo eval` scores a model
on a raw split and reports the time per image."""

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cityscapes_lab.cli import main
from cityscapes_lab.data import png
from cityscapes_lab.models.checkpoints import save_checkpoint
from cityscapes_lab.metrics.folders import evaluate_folders
from cityscapes_lab.models import build_model, model_spec


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
    weights = (tmp_path / "hrnet.pt").read_bytes()  # the result names the file that produced it
    assert scores["weights_sha256"] == hashlib.sha256(weights).hexdigest() and scores["weights_bytes"] == len(weights)
    assert scores["model"] == "hrnet_w48_ocr" and scores["precision"] == "fp32"


def test_zoo_eval_defaults_to_fp32_the_published_precision_and_predict_to_auto():
    from cityscapes_lab.cli import cli

    def default(*path: str) -> str:
        command = cli
        for name in path:
            command = command.commands[name]
        return next(p.default for p in command.params if p.name == "precision")

    assert default("zoo", "eval") == "fp32" and default("predict") == "auto"


def test_predict_json_names_the_weights_file(unet_checkpoint, raw_small, tmp_path, capsys):
    run(["predict", "--weights", str(unet_checkpoint), str(raw_small / "leftImg8bit" / "val"), "--out",
         str(tmp_path / "pred"), "--no-overlay", "--no-color", "--json", str(tmp_path / "run.json")], capsys)
    record = json.loads((tmp_path / "run.json").read_text())
    weights = Path(unet_checkpoint).read_bytes()
    assert record["weights_sha256"] == hashlib.sha256(weights).hexdigest() and record["weights_bytes"] == len(weights)
    assert record["model"] == "unet_paper" and record["predictions"] == 10 and record["protocol"] == "whole"


def test_zoo_list_names_every_published_number(capsys):
    printed = run(["zoo", "list"], capsys)
    for text in ("81.60", "82.27", "84.41", "86.42", "73.31", "77.04", "84.83", "SERNet-Former: not runnable",
                 "hrnet_ocr_cs_8162_torch11.pth", "upernet_internimage_xl_512x1024_160k_mapillary2cityscapes.pth",
                 "76.20", "82.40", "nvidia/segformer-b5-finetuned-cityscapes-1024-1024/resolve/main/pytorch_model.bin",
                 "non-commercial"):
        assert text in printed


# --- bad input: one line naming the file and the fix -------------------------------------------------------------

def test_predict_needs_weights_unless_random_weights_are_asked_for(raw_small, tmp_path, capsys):
    from oneline import expect_error

    images = raw_small / "leftImg8bit" / "test"
    expect_error(["predict", "--model", "unet_paper", images, "--out", tmp_path / "a"], capsys, "--weights",
                 "--random-weights")
    assert not (tmp_path / "a").exists()
    printed = run(["predict", "--model", "unet_paper", "--random-weights", str(images), "--out", str(tmp_path / "b"),
                   "--no-color", "--no-overlay"], capsys)
    assert "wrote 3 predictions" in printed


def test_a_checkpoint_names_its_model_and_a_mismatch_is_refused(raw_small, unet_checkpoint, tmp_path, capsys):
    from oneline import expect_error

    images = raw_small / "leftImg8bit" / "test"
    expect_error(["predict", "--model", "hrnet_w48_ocr", "--weights", unet_checkpoint, images, "--out",
                  tmp_path / "a"], capsys, str(unet_checkpoint), "unet_paper", "hrnet_w48_ocr")
    assert not (tmp_path / "a").exists()
    printed = run(["predict", "--weights", str(unet_checkpoint), str(images), "--out", str(tmp_path / "b")], capsys)
    assert "wrote 3 predictions" in printed


def test_empty_checkpoint_and_unknown_devices(raw_small, unet_checkpoint, tmp_path, capsys):
    from oneline import expect_error

    images = raw_small / "leftImg8bit" / "test"
    empty = tmp_path / "best.pt"
    empty.write_bytes(b"")
    expect_error(["predict", "--model", "unet_paper", "--weights", empty, images, "--out", tmp_path / "a"], capsys,
                 str(empty), "empty")
    for device in ("cuda", "cuda:3", "tpu"):
        expect_error(["predict", "--weights", unet_checkpoint, images, "--out", tmp_path / "a", "--device", device],
                     capsys, "--device", device, "cpu")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("video", ["empty", "corrupt"])
def test_a_broken_video_is_one_line_without_decoder_noise(video, unet_checkpoint, tmp_path, capfd):
    from oneline import expect_error

    path = tmp_path / "drive.mp4"
    path.write_bytes(b"" if video == "empty" else b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    expect_error(["predict", "--weights", unet_checkpoint, path, "--out", tmp_path / "out"], capfd, str(path))
    assert not (tmp_path / "out" / "labelIds").exists() or not any((tmp_path / "out" / "labelIds").iterdir())


def test_zoo_eval_refuses_the_test_split(raw_small, unet_checkpoint, capsys):
    from oneline import expect_error

    expect_error(["zoo", "eval", "unet_paper", "--weights", unet_checkpoint, "--data", raw_small, "--split", "test"],
                 capsys, "--split test", "no public labels", "predict")


def test_zoo_eval_names_a_corrupt_image_in_the_download(raw_small, tmp_path, capsys):
    import shutil

    from oneline import expect_error

    raw = tmp_path / "raw"
    shutil.copytree(raw_small, raw)
    broken = sorted(raw.glob("leftImg8bit/val/*/*.png"))[0]
    data = bytearray(broken.read_bytes())  # header and end marker intact, the pixel data corrupt
    data[len(data) // 2:len(data) // 2 + 2000] = bytes(2000)
    broken.write_bytes(bytes(data))
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "unet.pt", {"model_name": "unet_paper", "model_options": {"alpha": 0.25},
                                           "num_classes": 19, "state_dict": build_model(
                                               "unet_paper", 19, alpha=0.25).state_dict()})
    expect_error(["zoo", "eval", "unet_paper", "--weights", tmp_path / "unet.pt", "--data", raw], capsys,
                 broken.name)
