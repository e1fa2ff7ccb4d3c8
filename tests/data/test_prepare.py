"""Preparing stand-in downloads for both protocols, from folders and zips, resumably."""

import json

import cv2
import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from cityscapes_lab import labels, load_prepared
from cityscapes_lab.data import png
from cityscapes_lab.data import prepare as prepare_module
from cityscapes_lab.data.prepare import PrepareOptions, paper_size, prepare
from cityscapes_lab.data.synth import SynthOptions, synthesize
from cityscapes_lab.errors import DataError


def test_paper_size_rounds_up_to_multiples_of_16():
    assert paper_size(2048, 1024) == (416, 208)
    assert paper_size(1024, 512) == (208, 112)
    assert paper_size(512, 256) == (112, 64)


@pytest.fixture(scope="module")
def paper(raw_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "prepared"
    prepare(raw_small, out, PrepareOptions(protocol="paper", export_png=True), workers=2)
    return load_prepared(out)


def test_paper_splits_match_the_study(paper, raw_small):
    names = sorted(p.name.replace("_leftImg8bit", "") for p in raw_small.glob("leftImg8bit/train/*/*.png"))
    labeled, unlabeled = train_test_split(names, test_size=0.9, random_state=42)
    assert paper.splits["train_labeled"] == sorted(n[:-4] for n in labeled)
    assert paper.splits["train_unlabeled"] == sorted(n[:-4] for n in unlabeled)
    val_names = sorted(p.name.replace("_leftImg8bit", "") for p in raw_small.glob("leftImg8bit/val/*/*.png"))
    val, test = train_test_split(val_names, test_size=0.5, random_state=42)
    assert paper.splits["val"] == sorted(n[:-4] for n in val) and paper.splits["test"] == sorted(n[:-4] for n in test)
    assert paper.splits["train_full"] == sorted(paper.splits["train_labeled"] + paper.splits["train_unlabeled"])
    assert {k: len(v) for k, v in paper.splits.items()} == {"train_full": 24, "train_labeled": 2,
                                                             "train_unlabeled": 22, "val": 5, "test": 5}
    assert paper.meta["counts"]["train_labeled"] == 2 and paper.stand_in
    assert paper.meta["label_scheme"] == "paper35" and paper.num_classes == 35 and paper.ignore_index is None


def test_paper_pixels_are_the_studys_resize_and_label_shift(paper, raw_small):
    split = paper.split("val")
    assert split.images.shape == (5, 64, 112, 3) and split.labels.shape == (5, 64, 112)
    image_id = split.ids[0]
    city = image_id.split("_")[0]
    photo = png.decode((raw_small / f"leftImg8bit/val/{city}/{image_id}_leftImg8bit.png").read_bytes())
    label_ids = png.decode((raw_small / f"gtFine/val/{city}/{image_id}_gtFine_labelIds.png").read_bytes())
    assert np.array_equal(split.images[0], cv2.resize(photo, (112, 64), interpolation=cv2.INTER_LINEAR))
    resized = cv2.resize(label_ids, (112, 64), interpolation=cv2.INTER_NEAREST)
    expected = np.where(resized > 0, resized + 1, 0)
    assert np.array_equal(split.labels[0], expected)
    assert 1 not in np.unique(split.labels)  # index 1 is never produced


def test_png_export_holds_the_same_pixels(paper):
    split = paper.split("train_labeled")
    for i, image_id in enumerate(split.ids):
        image = png.decode((paper.root / "train_labeled" / "images" / f"{image_id}.png").read_bytes())
        mask = png.decode((paper.root / "train_labeled" / "masks" / f"{image_id}.png").read_bytes())
        assert np.array_equal(image, split.images[i]) and np.array_equal(mask, split.labels[i])
    assert not (paper.root / "train_full").exists()  # leaf splits only: train_full would repeat them


def test_full_resolution_input_gives_416x208(tmp_path):
    raw = tmp_path / "raw"
    synthesize(raw, SynthOptions(counts={"train": 2, "val": 2, "test": 0, "train_extra": 0}), workers=2)
    prepare(raw, tmp_path / "out", PrepareOptions(protocol="paper", labeled_fraction=0.5), workers=2)
    data = load_prepared(tmp_path / "out")
    assert data.size == (416, 208) and data.split("train_full").images.shape == (2, 208, 416, 3)
    assert data.meta["source"]["original_size"] == [2048, 1024]


@pytest.mark.parametrize("workers", [None, 4], ids=["default-workers", "4-workers"])
def test_zips_give_the_same_bytes_as_folders(paper, raw_small_zips, tmp_path, workers, cli_process):
    """Several worker processes read the same zips (each opens its own handle): the arrays equal those prepared
    from the extracted folders byte for byte, with the default worker count and with more workers than cores. Run
    as a user runs it (a new process without torch loaded, so the workers are forked from it)."""
    result = cli_process(["prepare", "--raw", str(raw_small_zips), "--out", str(tmp_path / "z"), "--protocol",
                          "paper", "--export-png"] + (["--workers", str(workers)] if workers else []))
    assert result.returncode == 0, result.stderr
    zipped = load_prepared(tmp_path / "z")
    assert zipped.splits == paper.splits and zipped.meta["source"]["kind"] == "zips" and zipped.stand_in
    ours = sorted(p.relative_to(tmp_path / "z") for p in (tmp_path / "z").rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(paper.root) for p in paper.root.rglob("*") if p.is_file())
    assert ours == theirs and len(ours) > 10
    for relative in ours:
        if relative.name != "meta.json":  # it names the source (path, zips or folders)
            assert (tmp_path / "z" / relative).read_bytes() == (paper.root / relative).read_bytes(), relative


def test_interrupted_prepare_continues_and_equals_an_uninterrupted_one(paper, raw_small, tmp_path, monkeypatch):
    done = []
    original = prepare_module._prepare_chunk

    def interrupt_third(chunk):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append((chunk.source, chunk.number))
        return original(chunk)

    monkeypatch.setattr(prepare_module, "_prepare_chunk", interrupt_third)
    out = tmp_path / "prepared"
    with pytest.raises(KeyboardInterrupt):
        prepare(raw_small, out, PrepareOptions(protocol="paper"), workers=1)
    assert not out.exists() and (tmp_path / "prepared.partial").exists()
    with pytest.raises(DataError, match="not a prepared folder"):
        load_prepared(tmp_path / "prepared.partial")
    first_two = list(done)
    redone = []
    monkeypatch.setattr(prepare_module, "_prepare_chunk", lambda c: (redone.append((c.source, c.number)), original(c))[1])
    result = prepare(raw_small, out, PrepareOptions(protocol="paper"), workers=1)
    assert not result.skipped and not set(first_two) & set(redone) and len(redone) == 5 - 2  # 3 train + 2 val chunks
    resumed = load_prepared(out)
    for name in ("train_full", "val", "test"):
        assert np.array_equal(resumed.split(name).images, paper.split(name).images)
        assert np.array_equal(resumed.split(name).labels, paper.split(name).labels)
    assert not (tmp_path / "prepared.partial").exists()
    redone.clear()
    assert prepare(raw_small, out, PrepareOptions(protocol="paper"), workers=1).skipped and not redone
    assert not prepare(raw_small, out, PrepareOptions(protocol="paper"), workers=1, force=True).skipped
    assert len(redone) == 5


def test_standard_protocol(raw_small, tmp_path):
    listing = tmp_path / "labeled.txt"
    some = sorted(p.name for p in raw_small.glob("leftImg8bit/train/*/*.png"))[:5]
    listing.write_text("".join(f"leftImg8bit/train/x/{name} gtFine/train/x/y.png\n" for name in some))
    options = PrepareOptions(protocol="standard", split_family="seeded", fractions=("1/8", "1/2"),
                             labeled_list=str(listing), coarse=True)
    prepare(raw_small, tmp_path / "std", options, workers=2)
    data = load_prepared(tmp_path / "std")
    assert data.size == (512, 256) and data.num_classes == 19 and data.ignore_index == 255
    assert data.split_family == "seeded" and data.meta["split_lists"] == {}
    train = data.split("train")
    values = set(np.unique(train.labels).tolist())
    assert values <= set(range(19)) | {255} and len(values) > 10
    assert data.split("test").labels is None and len(data.split("test")) == 3
    assert len(data.splits["train_labeled_1_8"]) == 3 and len(data.splits["train_labeled_1_2"]) == 12
    assert sorted(data.splits["train_labeled_1_8"] + data.splits["train_unlabeled_1_8"]) == data.splits["train"]
    assert data.splits["train_labeled"] == sorted(name[: -len("_leftImg8bit.png")] for name in some)
    extra = data.split("train_extra")
    assert len(extra) == 2 and set(np.unique(extra.labels).tolist()) <= set(range(19)) | {255}
    # trainIds are the official mapping of the labelIds
    image_id = train.ids[0]
    city = image_id.split("_")[0]
    label_ids = png.decode((raw_small / f"gtFine/train/{city}/{image_id}_gtFine_labelIds.png").read_bytes())
    assert np.array_equal(train.labels[0], labels.LABELID_TO_TRAINID[label_ids])


def test_standard_protocol_downscaled_copy(raw_small, tmp_path):
    prepare(raw_small, tmp_path / "small", PrepareOptions(protocol="standard", size=(256, 128), split_family="seeded"),
            workers=1)
    data = load_prepared(tmp_path / "small")
    assert data.size == (256, 128) and data.split("val").images.shape == (10, 128, 256, 3)
    assert json.loads((tmp_path / "small" / "meta.json").read_text())["options"]["size"] == [256, 128]


def test_load_prepared_api(paper):
    from cityscapes_lab.data.torch_dataset import SegmentationDataset

    assert len(SegmentationDataset(paper.split("val"))) == 5
    image, label = SegmentationDataset(paper.split("val"))[0]
    assert image.shape == (3, 64, 112) and str(image.dtype) == "torch.uint8" and str(label.dtype) == "torch.int64"
    in_memory = load_prepared(paper.root, in_memory=True)
    assert np.array_equal(in_memory.split("test").labels, paper.split("test").labels)
    with pytest.raises(DataError, match="has no split 'nope'"):
        paper.split("nope")
