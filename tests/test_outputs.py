"""No command can destroy data it did not make, and every output problem is one line.

An output that is, contains or lies inside an input or the current folder, an existing file, or a folder of
someone else's files is refused, with ``--force`` too (``--force`` replaces only what the tool made). Outputs that
cannot be written, and output files that are folders, get one line naming the path.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

from cityscapes_lab.data.arrays import save_arrays
from cityscapes_lab.data.prepared import SplitArrays
from oneline import expect_error, run_cli

# Nobody can create entries in sysfs, root included: an unwritable place on any Linux machine.
UNWRITABLE = Path("/sys/cityscapes-lab-test-output")


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes, and every folder."""
    return {p.relative_to(folder): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


@pytest.fixture
def raw(raw_small, tmp_path) -> Path:
    copy = tmp_path / "download" / "cityscapes"
    shutil.copytree(raw_small, copy)
    return copy


@pytest.fixture
def user_folder(tmp_path) -> Path:
    """A folder of the user's own files."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep me")
    return folder


@pytest.fixture
def array_set(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "set"
    save_arrays(folder, SplitArrays("set", ["aachen_000000_000019", "bochum_000000_000019"],
                                    rng.integers(0, 255, (2, 16, 32, 3), np.uint8),
                                    rng.integers(0, 35, (2, 16, 32), np.uint8)))
    return folder


# --- prepare: the download can never be replaced ------------------------------------------------------------

@pytest.mark.parametrize("where", ["the-download", "its-parent", "inside-it"])
def test_prepare_force_never_replaces_the_download(raw, where, capsys):
    out = {"the-download": raw, "its-parent": raw.parent, "inside-it": raw / "prepared"}[where]
    before = snapshot(raw.parent)
    relation = {"the-download": "is", "its-parent": "contains", "inside-it": "lies inside"}[where]
    expect_error(["prepare", "--raw", raw, "--out", out, "--protocol", "paper", "--force"], capsys,
                 str(out), f"{relation} the input", "--out")
    assert snapshot(raw.parent) == before


def test_prepare_out_dot_is_refused_not_a_traceback(raw, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    expect_error(["prepare", "--raw", raw, "--out", ".", "--protocol", "paper", "--force"], capsys,
                 "current folder", "--out")
    assert [p.name for p in work.iterdir()] == ["notes.txt"]


def test_prepare_force_on_a_file_keeps_the_file(raw, tmp_path, capsys):
    target = tmp_path / "results.csv"
    target.write_text("a,b\n1,2\n")
    expect_error(["prepare", "--raw", raw, "--out", target, "--protocol", "paper", "--force"], capsys,
                 str(target), "is a file")
    assert target.read_text() == "a,b\n1,2\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "download", "results.csv"]


def test_prepare_force_replaces_its_own_folder(raw_small, tmp_path, capsys):
    out = tmp_path / "prepared"
    for force in ([], ["--force"]):
        code, printed, err = run_cli(["prepare", "--raw", raw_small, "--out", out, "--protocol", "paper",
                                      "--workers", "1", *force], capsys)
        assert code == 0 and "prepared" in printed, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no left-over old copy beside it


# --- the same rule for every command that writes -------------------------------------------------------------

def test_synth_force_leaves_other_folders_alone(user_folder, tmp_path, monkeypatch, capsys):
    before = snapshot(user_folder)
    expect_error(["synth", user_folder, "--train", "1", "--val", "1", "--test", "0", "--size", "64x32", "--force"],
                 capsys, str(user_folder), "not stand-in data")
    monkeypatch.chdir(user_folder)
    expect_error(["synth", ".", "--train", "1", "--val", "1", "--test", "0", "--size", "64x32", "--force"],
                 capsys, "current folder")
    assert snapshot(user_folder) == before


@pytest.mark.parametrize("where", ["the-data", "inside-the-data", "a-user-folder"])
def test_study_out_must_not_touch_the_data_or_other_files(tiny_paper, user_folder, where, capsys):
    out = {"the-data": tiny_paper, "inside-the-data": tiny_paper / "runs", "a-user-folder": user_folder}[where]
    before, mine = snapshot(tiny_paper), snapshot(user_folder)
    expect_error(["study", "--data", tiny_paper, "--out", out, "--approaches", "ldt", "--set", "train.epochs=1"],
                 capsys, str(out), "--out")
    assert snapshot(tiny_paper) == before and snapshot(user_folder) == mine


@pytest.mark.parametrize("where", ["the-input", "holding-the-input", "a-user-folder"])
def test_predict_out_must_not_touch_the_inputs_or_other_files(raw, user_folder, where, capsys):
    images = raw / "leftImg8bit" / "val"
    out = {"the-input": images, "holding-the-input": raw, "a-user-folder": user_folder}[where]
    before, mine = snapshot(raw), snapshot(user_folder)
    expect_error(["predict", "--model", "unet_paper", "--random-weights", images, "--out", out], capsys,
                 str(out), "--out")
    assert snapshot(raw) == before and snapshot(user_folder) == mine


def test_export_png_out_must_not_touch_the_set_or_other_files(array_set, user_folder, capsys):
    before, mine = snapshot(array_set), snapshot(user_folder)
    for out in (array_set, array_set / "png", user_folder):
        expect_error(["export-png", array_set, "--out", out], capsys, str(out), "--out")
    assert snapshot(array_set) == before and snapshot(user_folder) == mine


@pytest.mark.parametrize("where", ["the-data", "a-user-folder"])
def test_train_out_must_not_touch_the_data_or_other_files(tiny_standard, user_folder, where, capsys):
    out = {"the-data": tiny_standard, "a-user-folder": user_folder}[where]
    before, mine = snapshot(tiny_standard), snapshot(user_folder)
    expect_error(["train", "--data", tiny_standard, "--model", "unet_paper", "--out", out, "--set",
                  "train.epochs=1"], capsys, str(out), "--out")
    assert snapshot(tiny_standard) == before and snapshot(user_folder) == mine


# --- outputs that cannot be written or are the wrong kind ------------------------------------------------------

def test_unwritable_outputs_are_one_line(raw_small, tiny_standard, array_set, tmp_path, capsys):
    val = raw_small / "leftImg8bit" / "val"
    gt = raw_small / "gtFine" / "val"
    cases = [
        ["evaluate", "--pred", gt, "--gt", gt, "--json", UNWRITABLE / "scores.json"],
        ["evaluate", "--pred", gt, "--gt", gt, "--json", "/sys/scores.json"],
        ["predict", "--model", "unet_paper", "--random-weights", val, "--out", UNWRITABLE],
        ["export-png", array_set, "--out", UNWRITABLE],
        ["train", "--data", tiny_standard, "--model", "unet_paper", "--out", UNWRITABLE, "--set", "train.epochs=1"],
    ]
    for args in cases:
        expect_error(args, capsys, "cannot write")


def test_report_into_an_unwritable_folder_is_one_line(tmp_path, capsys, tiny_paper):
    from cityscapes_lab.config import load_config
    from cityscapes_lab.semisup.study import run_study

    runs = tmp_path / "runs"
    run_study(tiny_paper, runs, ["ldt"], load_config(overrides=[
        "study.runs=1", "study.models=1", "study.top_k=1", "train.epochs=1", "train.batch_size=2",
        "train.threads=1"]), show_progress=False)
    (runs / "report").symlink_to(UNWRITABLE)
    expect_error(["report", runs], capsys, "report", "cannot write")
    (runs / "report").unlink()
    (runs / "report").write_text("a file where the report folder goes")
    expect_error(["report", runs], capsys, "report", "is a file")


def test_output_that_is_an_existing_file(raw_small, tiny_standard, array_set, tmp_path, capsys):
    existing = tmp_path / "existing.txt"
    existing.write_text("mine")
    val = raw_small / "leftImg8bit" / "val"
    for args in (["predict", "--model", "unet_paper", "--random-weights", val, "--out", existing],
                 ["export-png", array_set, "--out", existing],
                 ["train", "--data", tiny_standard, "--model", "unet_paper", "--out", existing]):
        expect_error(args, capsys, str(existing), "is a file")
    assert existing.read_text() == "mine"


def test_evaluate_json_must_be_a_file_and_writes_only_there(raw_small, tmp_path, capsys):
    gt = raw_small / "gtFine" / "val"
    pred = tmp_path / "pred"
    pred.mkdir()
    for label in gt.glob("*/*_labelIds.png"):
        shutil.copy(label, pred / label.name)
    work = tmp_path / "work"
    folder = work / "scores"
    folder.mkdir(parents=True)
    expect_error(["evaluate", "--pred", pred, "--gt", gt, "--json", folder], capsys, str(folder), "is a folder")
    assert [p.name for p in work.iterdir()] == ["scores"] and not any(folder.iterdir())
    # A missing folder on the way is created, and nothing is written anywhere else.
    code, _, err = run_cli(["evaluate", "--pred", pred, "--gt", gt, "--json", folder / "new" / "s.json",
                            "--workers", "1"], capsys)
    assert code == 0, err
    assert [p.relative_to(work).as_posix() for p in sorted(work.rglob("*"))] == [
        "scores", "scores/new", "scores/new/s.json"]
