"""`cityscapes-lab train`: what it refuses (one line naming the file or setting, before any work) and a short
training that it runs."""

import json

import pytest

from oneline import expect_error, run_cli

TINY = ["--set", "train.epochs=1", "--set", "train.batch_size=4", "--set", "online.crop=[64,64]"]


@pytest.fixture
def args(tiny_standard, tmp_path) -> list:
    return ["train", "--data", tiny_standard, "--model", "unet_paper", "--option", "alpha=0.25", "--out",
            tmp_path / "run", "--split", "train_labeled_1_2", *TINY]


def test_a_short_training_writes_its_checkpoint(args, tmp_path, capsys):
    code, printed, err = run_cli(args, capsys)
    assert code == 0, err
    assert "best val mIoU" in printed and json.loads((tmp_path / "run" / "result.json").read_text())["epochs"] == 1


def test_a_rerun_continues_the_same_training_and_refuses_another(args, tmp_path, capsys):
    """Rerun with the same settings: the training in --out continues (here: it is finished, so nothing changes).
    With another setting, model or seed its last.pt would be resumed into a training it is not: refused in one
    line that names what differs, and the folder is left as it was."""
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    out = tmp_path / "run"
    assert {path.name for path in out.iterdir()} == {"run.json", "last.pt", "best.pt", "result.json"}
    code, _, err = run_cli([*args, "--set", "train.threads=1"], capsys)  # not a result setting: the same training
    assert code == 0, err
    files = {path.name: path.read_bytes() for path in out.iterdir()}
    expect_error([*args, "--set", "train.lr=0.5"], capsys, str(out), "other settings", "train.lr: 0.003 -> 0.5")
    expect_error([*args, "--seed", "3"], capsys, str(out), "seed: 0 -> 3")
    expect_error([*args[:4], "deeplabv3plus_r50", *args[7:]], capsys, 'model: "unet_paper" -> "deeplabv3plus_r50"')
    assert {path.name: path.read_bytes() for path in out.iterdir()} == files
    # a resume point without its record (run.json is written before the first epoch): nothing says what it is
    (out / "run.json").unlink()
    del files["run.json"]
    expect_error(args, capsys, str(out / "last.pt"), "without run.json", "delete it")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == files


def test_weights_that_are_empty_or_do_not_fit(args, unet_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    expect_error([*args, "--weights", empty], capsys, str(empty), "empty")
    # A 35-class U-Net of width 0.5 into a 19-class U-Net of width 0.25.
    expect_error([*args, "--weights", unet_checkpoint], capsys, str(unet_checkpoint), "does not fit")
    assert not (tmp_path / "run").exists()


def test_split_without_labels_and_unknown_splits(args, tmp_path, capsys):
    expect_error([*args, "--split", "test"], capsys, "'test' (--split)", "no labels")
    expect_error([*args, "--val-split", "vla"], capsys, "--val-split", "vla", "val")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device", ["cuda", "tpu"])
def test_unknown_or_missing_device(args, device, tmp_path, capsys):
    expect_error([*args, "--set", f"train.device={device}"], capsys, "train.device", device, "cpu")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_does_not_keep_the_path_of_its_starting_backbone(tiny_standard, tmp_path):
    """``--option backbone_weights=FILE`` starts a training from an ImageNet backbone; the trained checkpoint
    rebuilds the network without that file (it may not exist where the checkpoint is used)."""
    import torch

    from cityscapes_lab.config import load_config
    from cityscapes_lab.data.prepared import load_prepared
    from cityscapes_lab.engine.prediction import load_predictor
    from cityscapes_lab.engine.runtime import Runtime
    from cityscapes_lab.engine.standard import train_standard
    from cityscapes_lab.models import build_model, model_spec
    from cityscapes_lab.models.checkpoints import load_checkpoint

    options = dict(model_spec("deeplabv3plus_r50").test_options)
    source = build_model("deeplabv3plus_r50", 19, **options)
    backbone = tmp_path / "resnet50.pth"
    torch.save(source.backbone.state_dict(), backbone)
    options["backbone_weights"] = str(backbone)
    model = build_model("deeplabv3plus_r50", 19, **options)
    config = load_config(overrides=["train.epochs=1", "train.batch_size=4", "online.crop=[64,64]", "train.threads=1"])
    train_standard("deeplabv3plus_r50", model, options, load_prepared(tiny_standard), config, tmp_path / "run",
                   Runtime.from_config(config.train), train_split="train_labeled_1_2")
    backbone.unlink()
    saved = load_checkpoint(tmp_path / "run" / "best.pt")
    assert "backbone_weights" not in saved["model_options"] and saved["model_options"]["width"] == options["width"]
    load_predictor(None, tmp_path / "run" / "best.pt", device="cpu")  # builds and loads without the file


def test_the_best_epoch_is_chosen_under_train_val_rule(args, tiny_standard, tmp_path, capsys):
    """train.val_rule: each epoch's val mIoU is the rule's (UniMatch V1's windows, 48 wide), so result.json's best
    val mIoU is best.pt's score under that rule, not its whole-image score; the rule is part of what the training
    is (a rerun with another is refused)."""
    import torch

    from cityscapes_lab.data.prepared import load_prepared
    from cityscapes_lab.engine.prediction import protocol_for
    from cityscapes_lab.engine.runtime import Runtime
    from cityscapes_lab.engine.validation import official_miou
    from cityscapes_lab.models import model_spec
    from cityscapes_lab.semisup.pseudo import load_model

    rule = ["--set", "train.val_rule=slide-unimatch-v1", "--set", "train.val_window=48"]
    code, _, err = run_cli([*args, *rule, "--set", "train.epochs=2"], capsys)
    assert code == 0, err
    out = tmp_path / "run"
    result = json.loads((out / "result.json").read_text())
    assert result["best_val_miou"] == max(row["val_miou"] for row in result["history"])
    runtime = Runtime(torch.device("cpu"), channels_last=False)
    model, val = load_model(out / "best.pt", runtime), load_prepared(tiny_standard).split("val")
    windows = protocol_for(model_spec("unet_paper"), "slide-unimatch-v1", 48)
    assert result["best_val_miou"] == pytest.approx(official_miou(model, val, "standard", runtime, windows), abs=1e-12)
    assert result["best_val_miou"] != pytest.approx(official_miou(model, val, "standard", runtime), abs=1e-6)
    expect_error([*args, "--set", "train.epochs=2"], capsys, 'train.val_rule: "slide-unimatch-v1" -> "auto"')
