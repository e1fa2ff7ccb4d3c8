"""Every kind of bad input: one line naming the file and the fix, exit code 2, no traceback, nothing left."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cityscapes_lab.data import png
from oneline import run_cli


def expect_failure(raw: Path, out: Path, capsys, *must_mention: str, protocol: str = "paper") -> str:
    code, _, err = run_cli(["prepare", "--raw", str(raw), "--out", str(out), "--protocol", protocol,
                            "--workers", "1"], capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for text in must_mention:
        assert text in lines[0], lines[0]
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    return lines[0]


@pytest.fixture
def raw(raw_small, tmp_path) -> Path:
    copy = tmp_path / "raw"
    shutil.copytree(raw_small, copy)
    return copy


def first(raw: Path, pattern: str) -> Path:
    return sorted(raw.glob(pattern))[0]


def test_missing_folder(raw, tmp_path, capsys):
    shutil.rmtree(raw / "gtFine")
    expect_failure(raw, tmp_path / "out", capsys, "gtFine/", "--raw")


def test_missing_raw_folder(tmp_path, capsys):
    expect_failure(tmp_path / "nowhere", tmp_path / "out", capsys, "nowhere", "no such folder")


def test_truncated_zip(raw_small_zips, tmp_path, capsys):
    raw = tmp_path / "zips"
    shutil.copytree(raw_small_zips, raw)
    archive = raw / "gtFine_trainvaltest.zip"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    expect_failure(raw, tmp_path / "out", capsys, "gtFine_trainvaltest.zip", "download it again")


def test_file_that_is_not_a_zip(raw_small_zips, tmp_path, capsys):
    raw = tmp_path / "zips"
    shutil.copytree(raw_small_zips, raw)
    (raw / "leftImg8bit_trainvaltest.zip").write_text("<html>403 Forbidden</html>")
    expect_failure(raw, tmp_path / "out", capsys, "leftImg8bit_trainvaltest.zip", "not a readable zip")


def test_image_without_label_ids(raw, tmp_path, capsys):
    label = first(raw, "gtFine/train/*/*_labelIds.png")
    label.unlink()
    stem = label.name.replace("_gtFine_labelIds.png", "")
    expect_failure(raw, tmp_path / "out", capsys, f"{stem}_leftImg8bit.png", "labelIds", "remove this image")


def test_unreadable_png(raw, tmp_path, capsys):
    image = first(raw, "leftImg8bit/val/*/*.png")
    image.write_bytes(b"this is not a png" * 10)
    expect_failure(raw, tmp_path / "out", capsys, image.name, "unreadable PNG")


def test_truncated_png(raw, tmp_path, capsys):
    image = first(raw, "leftImg8bit/train/*/*.png")
    image.write_bytes(image.read_bytes()[:5000])
    expect_failure(raw, tmp_path / "out", capsys, image.name, "truncated")


def test_png_corrupt_inside(raw, tmp_path, capsys):
    """Header and end marker intact, data corrupt: caught while decoding, and the partial output is removed."""
    image = first(raw, "leftImg8bit/val/*/*.png")
    data = bytearray(image.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = bytes(2000)
    image.write_bytes(bytes(data))
    expect_failure(raw, tmp_path / "out", capsys, image.name, "unreadable PNG")


def test_mixed_image_sizes(raw, tmp_path, capsys):
    image = first(raw, "leftImg8bit/val/*/*.png")
    image.write_bytes(png.encode(np.zeros((128, 256, 3), np.uint8)))
    expect_failure(raw, tmp_path / "out", capsys, image.name, "256x128", "one size")


def test_label_values_out_of_range(raw, tmp_path, capsys):
    label = first(raw, "gtFine/val/*/*_labelIds.png")
    values = png.decode(label.read_bytes())
    values[10:20, 10:20] = 40
    label.write_bytes(png.encode(values))
    expect_failure(raw, tmp_path / "out", capsys, label.name, "out of range", "labelIds")


def test_colour_png_given_as_labels(raw, tmp_path, capsys):
    label = first(raw, "gtFine/val/*/*_labelIds.png")
    label.write_bytes(png.encode(np.zeros((256, 512, 3), np.uint8)))
    expect_failure(raw, tmp_path / "out", capsys, label.name, "greyscale")


def test_empty_split(raw, tmp_path, capsys):
    for image in raw.glob("leftImg8bit/val/*/*.png"):
        image.unlink()
    expect_failure(raw, tmp_path / "out", capsys, "val", "empty")


def test_unwritable_output_folder(raw_small, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "prepared"
    code, _, err = run_cli(["prepare", "--raw", str(raw_small), "--out", str(out), "--protocol", "paper"], capsys)
    assert code == 2 and err.count("\n") == 1 and str(blocker) in err and "cannot write" in err
    assert blocker.read_text() == "not a folder"


def test_unknown_protocol(raw_small, tmp_path, capsys):
    code, _, err = run_cli(["prepare", "--raw", str(raw_small), "--out", str(tmp_path / "o"), "--protocol", "cvpr"],
                           capsys)
    assert code == 2 and err.count("\n") == 1 and "--protocol" in err and "paper" in err and "Traceback" not in err


def test_existing_folder_that_is_not_prepared(raw_small, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for force in ([], ["--force"]):  # --force replaces only what the tool made
        code, _, err = run_cli(["prepare", "--raw", str(raw_small), "--out", str(out), "--protocol", "paper",
                                *force], capsys)
        assert code == 2 and err.count("\n") == 1 and "not a prepared folder" in err and "new or empty" in err, err
        assert sorted(p.name for p in out.parent.iterdir()) == ["busy"]
        assert [p.name for p in out.iterdir()] == ["precious.txt"] and (out / "precious.txt").read_text() == "keep me"


def test_real_entry_point_prints_one_line(tmp_path):
    """The installed console script (a separate process): exit code 2, one line on stderr, no traceback."""
    result = subprocess.run([sys.executable, "-m", "cityscapes_lab", "prepare", "--raw", str(tmp_path / "missing"),
                             "--out", str(tmp_path / "out"), "--protocol", "paper"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert str(tmp_path / "missing") in result.stderr


def test_size_larger_than_the_images_is_refused_before_any_work(raw_small, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["prepare", "--raw", str(raw_small), "--out", str(out), "--protocol", "standard",
                            "--size", "100000x50000"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--size 100000x50000" in err and "512x256" in err, err
    assert list(tmp_path.iterdir()) == []


def test_export_png_of_a_truncated_or_wrong_folder(tiny_paper, tmp_path, capsys):
    from cityscapes_lab.data.arrays import save_arrays
    from cityscapes_lab.data.prepared import SplitArrays
    from oneline import expect_error

    rng = np.random.default_rng(0)
    folder = tmp_path / "set"
    save_arrays(folder, SplitArrays("set", ["a_000000_000019", "b_000000_000019"],
                                    rng.integers(0, 255, (2, 16, 32, 3), np.uint8),
                                    rng.integers(0, 35, (2, 16, 32), np.uint8)))
    labels = folder / "labels.npy"
    labels.write_bytes(labels.read_bytes()[:-100])
    expect_error(["export-png", folder, "--out", tmp_path / "png"], capsys, str(folder), "labels.npy")
    # A prepared folder is not an array set: say what belongs there, and never advise deleting it.
    line = expect_error(["export-png", tiny_paper, "--out", tmp_path / "png"], capsys, str(tiny_paper), "ids.json",
                        "RUNS/datasets/")
    assert "delete" not in line.lower() and "remove" not in line.lower()
    assert not (tmp_path / "png").exists()
