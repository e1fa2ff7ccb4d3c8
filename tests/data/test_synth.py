"""Stand-in data: the official layout, agreement with cityscapesscripts' own tools, coverage, determinism."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityscapes_lab import labels
from cityscapes_lab.data.layout import OFFICIAL_CITIES, find_frame_id
from cityscapes_lab.data.synth import MARKER, SynthOptions, synthesize
from cityscapes_lab.data.synth.render import clip_polygon, label_images, render
from cityscapes_lab.data.synth.scene import generate_scene

BORDERS = {"ego vehicle", "rectification border", "out of roi"}


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_official_layout_and_names(raw_small):
    files = files_under(raw_small)
    images = [f for f in files if f.startswith("leftImg8bit/")]
    assert sum(f.startswith("leftImg8bit/train/") for f in images) == 24
    assert sum(f.startswith("leftImg8bit/val/") for f in images) == 10
    assert sum(f.startswith("leftImg8bit/test/") for f in images) == 3
    for image in images:
        _, split, city, name = image.split("/")
        assert city in OFFICIAL_CITIES[split]
        stem = name[: -len("_leftImg8bit.png")]
        assert name.endswith("_leftImg8bit.png") and str(find_frame_id(stem)) == stem and stem.startswith(city + "_")
        folder = "gtCoarse" if split == "train_extra" else "gtFine"
        for kind in ("labelIds.png", "instanceIds.png", "color.png", "polygons.json"):
            assert f"{folder}/{split}/{city}/{stem}_{folder}_{kind}" in files
    photo = Image.open(raw_small / images[0])
    assert photo.mode == "RGB" and photo.size == (512, 256)
    assert Image.open(raw_small / files[[f.endswith("instanceIds.png") for f in files].index(True)]).mode == "I;16"
    assert (raw_small / MARKER).exists()


def test_label_images_equal_the_official_tools_output(raw_small):
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    jsons = sorted(raw_small.glob("gt*/*/*/*_polygons.json"))
    assert len(jsons) == 39
    for path in jsons:
        annotation = Annotation()
        annotation.fromJsonFile(str(path))
        stem = str(path)[: -len("polygons.json")]
        assert np.array_equal(np.asarray(createLabelImage(annotation, "ids")), np.asarray(Image.open(stem + "labelIds.png")))
        assert np.array_equal(np.asarray(createInstanceImage(annotation, "ids")),
                              np.asarray(Image.open(stem + "instanceIds.png")))
        assert np.array_equal(np.asarray(createLabelImage(annotation, "color")), np.asarray(Image.open(stem + "color.png")))


def test_official_evaluator_reads_the_ground_truth(raw_small, tmp_path, monkeypatch):
    """cityscapesscripts' evaluator, fed the ground truth as the prediction, scores every present class 1.0."""
    import shutil

    predictions = tmp_path / "pred"
    predictions.mkdir()
    for gt in raw_small.glob("gtFine/val/*/*_gtFine_labelIds.png"):
        shutil.copy(gt, predictions / gt.name.replace("_gtFine_labelIds", "_pred"))
    monkeypatch.setenv("CITYSCAPES_DATASET", str(raw_small))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(predictions))
    import importlib

    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as evaluator
    evaluator = importlib.reload(evaluator)
    args = evaluator.args
    args.quiet, args.evalInstLevelScore, args.exportFile = True, True, str(tmp_path / "result.json")
    args.groundTruthSearch = str(raw_small / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")
    gts = sorted(map(str, raw_small.glob("gtFine/val/*/*_gtFine_labelIds.png")))
    preds = [evaluator.getPrediction(args, gt) for gt in gts]
    result = evaluator.evaluateImgLists(preds, gts, args)
    scores = [v for v in result["classScores"].values() if not np.isnan(v)]
    assert len(scores) >= 10 and min(scores) == pytest.approx(1.0)


def test_test_split_annotates_only_the_void_borders(raw_small):
    for path in raw_small.glob("gtFine/test/*/*_polygons.json"):
        objects = json.loads(path.read_text())["objects"]
        assert objects and {o["label"] for o in objects} <= BORDERS
        ids = np.unique(np.asarray(Image.open(str(path).replace("polygons.json", "labelIds.png"))))
        assert set(ids.tolist()) <= {0, 1, 2, 3}


def test_scenes_cover_every_evaluated_class_and_the_borders():
    seen = np.zeros(256, dtype=bool)
    instances = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        scene = generate_scene(rng, 512, 256)
        annotated = [(s.label, clip_polygon(s.polygon, 512, 256)) for s in scene.shapes if s.annotated]
        annotated = [(name, p) for name, p in annotated if len(p) >= 3]
        label_ids, instance_ids = label_images(annotated, 512, 256)
        seen[np.unique(label_ids)] = True
        instances += int((np.unique(instance_ids) >= 1000).sum())
    train_ids = set(labels.LABELID_TO_TRAINID[np.flatnonzero(seen)].tolist()) - {255}
    assert train_ids == set(range(19))
    assert all(seen[labels.NAME_TO_LABEL[name].id] for name in BORDERS)
    assert instances > 100


def test_varied_scenes_and_plausible_photos():
    rng = np.random.default_rng(3)
    first, second = (render(generate_scene(rng, 256, 128), rng) for _ in range(2))
    assert not np.array_equal(first.label_ids, second.label_ids)
    for result in (first, second):
        assert result.photo.dtype == np.uint8 and result.photo.shape == (128, 256, 3)
        assert 20 < result.photo.mean() < 235 and result.photo.std() > 15
        # the photo is informative about the labels but not a copy of them: sky and road differ on average
        sky, road = result.label_ids == 23, result.label_ids == 7
        if sky.any() and road.any():
            assert abs(result.photo[sky].mean() - result.photo[road].mean()) > 5


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    options = SynthOptions(counts={"train": 3, "val": 2, "test": 1, "train_extra": 0}, width=256, height=128, seed=5)
    synthesize(tmp_path / "a", options, workers=1)
    synthesize(tmp_path / "b", options, workers=2)
    other = SynthOptions(counts=options.counts, width=256, height=128, seed=6)
    synthesize(tmp_path / "c", other, workers=1)
    files = files_under(tmp_path / "a")
    assert files == files_under(tmp_path / "b")
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    photo = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert (tmp_path / "a" / photo).read_bytes() != (tmp_path / "c" / photo).read_bytes()


def test_zips_have_the_official_internal_layout(raw_small, raw_small_zips):
    names = {p.name for p in raw_small_zips.iterdir()}
    assert {"gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip", "gtCoarse.zip",
            "leftImg8bit_trainextra.zip"} <= names
    with zipfile.ZipFile(raw_small_zips / "gtFine_trainvaltest.zip") as archive:
        members = archive.namelist()
        assert "README" in members and "license.txt" in members
        fine = sorted(m for m in members if m.startswith("gtFine/"))
        assert fine == [f for f in files_under(raw_small) if f.startswith("gtFine/")]
        member = fine[0]
        assert archive.read(member) == (raw_small / member).read_bytes()  # same seed, same files
    with zipfile.ZipFile(raw_small_zips / "leftImg8bit_trainvaltest.zip") as archive:
        assert all(m.startswith("leftImg8bit/") and "/train_extra/" not in m
                   for m in archive.namelist() if m not in ("README", "license.txt"))


def test_rerun_is_a_no_op_and_interrupted_builds_continue(tmp_path, monkeypatch):
    options = SynthOptions(counts={"train": 4, "val": 0, "test": 0, "train_extra": 0}, width=256, height=128)
    out = tmp_path / "data"
    from cityscapes_lab.data.synth import writer

    calls = []
    original = writer._make_one

    def flaky(task):
        calls.append(task.index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(task)

    monkeypatch.setattr(writer, "_make_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        synthesize(out, options, workers=1)
    assert not out.exists() and (tmp_path / "data.partial").exists()  # nothing that looks complete
    calls.clear()
    monkeypatch.setattr(writer, "_make_one", lambda task: (calls.append(task.index), original(task))[1])
    assert synthesize(out, options, workers=1)
    written = [c for c in calls]
    assert written == [0, 1, 2, 3]  # every task is visited; the two finished frames return at once
    assert len(list(out.glob("leftImg8bit/train/*/*.png"))) == 4 and not (tmp_path / "data.partial").exists()
    mtime = os.path.getmtime(out / MARKER)
    assert synthesize(out, options, workers=1) is False and os.path.getmtime(out / MARKER) == mtime
