"""The study on the standard protocol (the semi-supervised benchmark): the supervised DeepLabV3+ baseline on a
labeled subset and Inconsistency Masks over two generations, end to end on the CPU at a reduced size; its IM
pairs checked against the teachers' own predictions; resume after kill -9; the local and Ray executors; the plan;
the settings a standard study refuses."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cityscapes_lab.config import load_config
from cityscapes_lab.data.arrays import load_arrays, load_extra
from cityscapes_lab.data.prepared import load_prepared
from cityscapes_lab.engine.inference import predict
from cityscapes_lab.engine.runtime import Runtime
from cityscapes_lab.errors import ConfigError
from cityscapes_lab.models.checkpoints import load_checkpoint
from cityscapes_lab.report import write_report
from cityscapes_lab.semisup.pseudo import load_model
from cityscapes_lab.semisup.study import describe_plan, run_study
from cityscapes_lab.study.executors import start_local_ray
from cityscapes_lab.study.keys import GroupKey, StudyLayout
from cityscapes_lab.study.store import ResultStore

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "ssl-supervised.toml"
# the recipe (SGD, poly, OHEM, online augmentation) on a small DeepLabV3+ of the same layout, 64x64 crops of the
# 128x64 images, the seeded 1/2 subset of tiny_standard (12 labeled, 12 unlabeled), scored on val with UniMatch's
# sliding windows (48 wide here)
TINY = ['train.model_options={"depths": [1, 1, 1, 2], "width": 8}', "study.labeled_subset=1/2", "study.runs=1",
        "study.models=2", "study.top_k=2", "semisup.students=2", "semisup.generations=2", "semisup.n=2",
        "train.epochs=2", "train.batch_size=2", "train.lr_reference_batch=2", "online.crop=[64, 64]",
        "train.ohem_min_kept=500", "study.eval_rule=slide-unimatch-v1", "study.eval_window=48",
        "study.eval_splits=val", "train.threads=1"]


def config(*extra: str):
    return load_config(RECIPE, TINY + list(extra))


def scores(folder) -> dict:
    with ResultStore(Path(folder) / "results.sqlite") as store:
        return {row.key: (row.status, store.scores(row.key)) for row in store.trainings()}


@pytest.fixture(scope="module")
def standard_study(tiny_standard, tmp_path_factory):
    out = tmp_path_factory.mktemp("standard-study") / "study"
    summary = run_study(tiny_standard, out, ["im"], config(), show_progress=False)
    assert (summary.trained, summary.skipped, summary.failed, summary.groups) == (6, 0, 0, 3)
    return out


def test_every_group_trains_and_is_scored_under_the_rule(standard_study):
    with ResultStore(StudyLayout(standard_study).database) as store:
        rows = store.trainings()
        assert sorted((r.approach, r.generation, r.status) for r in rows) == [
            ("im", 0, "done")] * 2 + [("im", 1, "done")] * 2 + [("ldt", 0, "done")] * 2
        for row in rows:
            val = store.scores(row.key)
            assert set(val) == {"val"} and 0 <= val["val"]["miou"] <= 1 and "paper_miou" not in val["val"]
            saved = load_checkpoint(row.checkpoint)
            assert saved["model_name"] == "deeplabv3plus_r50" and saved["protocol"] == "standard"
            assert saved["model_options"] == {"depths": [1, 1, 1, 2], "width": 8}
            assert saved["input_size"] == [128, 64]  # a downscaled copy: predict resizes to it (full size: None)
        # ranked by the official val mIoU (the standard protocol has no per-image paper metric)
        ranking = store.ranking(GroupKey("ldt", 1))
        assert [value for _, value in ranking] == sorted((store.scores(k)["val"]["miou"] for k, _ in ranking),
                                                         reverse=True)
    # the supervised baseline trained on the 12 labeled images only, with full batches of 2: 6 steps an epoch
    history = (standard_study / "models/ldt/run1/gen0/m00/history.csv").read_text().splitlines()
    assert len(history) == 3


def test_im_pairs_are_the_teachers_agreement_with_disagreement_ignored(standard_study, tiny_standard):
    """Generation 0's pairs, recomputed from LDT's top-2 checkpoints: the label is their common class, 255 where
    they disagree, and the input is black there; the students' set is the 12 labeled pairs plus the 12 IM pairs."""
    data = load_prepared(tiny_standard)
    layout = StudyLayout(standard_study)
    unlabeled = data.split("train_unlabeled_1_2")
    runtime = Runtime(torch.device("cpu"), channels_last=False)
    a, b = (predict(load_model(layout.top(GroupKey("ldt", 1), rank), runtime), np.asarray(unlabeled.images),
                    runtime) for rank in (1, 2))
    folder = layout.dataset(str(GroupKey("im", 1, 2, 0)))
    pairs, masks = load_arrays(folder / "pairs"), np.asarray(load_extra(folder / "pairs", "masks"))
    disagree = a != b
    assert 0 < disagree.mean() < 1
    assert np.array_equal(masks, disagree)
    assert np.array_equal(np.asarray(pairs.labels), np.where(disagree, 255, a))
    images = np.asarray(unlabeled.images)
    assert np.array_equal(np.asarray(pairs.images), np.where(disagree[..., None], 0, images))
    students = load_arrays(folder / "set")
    assert sorted(p.name for p in (folder / "set").iterdir()) == ["ids.json", "links.json"]  # no copy of the rows
    labeled = data.split("train_labeled_1_2")
    assert students.ids == list(labeled.ids) + list(unlabeled.ids)
    assert np.array_equal(np.asarray(students.labels[:12]), np.asarray(labeled.labels))
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["train_unlabeled"]["mean_im_share"] == pytest.approx(disagree.mean())


def test_the_report_shows_the_official_val_scores(standard_study):
    files = write_report(standard_study)
    table = files.table_md.read_text()
    assert "Protocol: standard" in table and "slide-unimatch-v1" in table
    assert "official val mIoU (19 cl.)" in table and "paper test mIoU" not in table
    assert "| IM | 2 | 2 | 1 | 2 |" in table


def test_killed_during_a_student_then_resumed_gives_the_same_scores(tiny_standard, tmp_path, standard_study,
                                                                     cli_process):
    """kill -9 after the first epoch of generation 0's first student (LDT's 2 x 2 epochs came before): the same
    command finishes the study without retraining what was done, with the uninterrupted study's scores."""
    args = ["study", "--data", str(tiny_standard), "--approaches", "im", "--config", str(RECIPE),
            "--out", str(tmp_path / "study")] + [x for s in TINY for x in ("--set", s)]
    killed = cli_process(args, kill_after_epoch_saves=5)
    assert killed.returncode == -9, killed.stderr[-2000:]
    student = tmp_path / "study/models/im/run1/n2/gen0/m00"
    assert (student / "last.pt").exists() and not (student / "result.json").exists()
    resumed = cli_process(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "4 trainings run now, 2 already finished" in resumed.stdout
    assert len((student / "history.csv").read_text().splitlines()) == 3
    ours, clean = scores(tmp_path / "study"), scores(standard_study)
    assert ours.keys() == clean.keys()
    for key, (status, values) in clean.items():
        assert ours[key][0] == status == "done"
        assert ours[key][1]["val"] == pytest.approx(values["val"], abs=1e-9, nan_ok=True)


def test_the_evaluation_rule_and_its_window_decide_the_scores(standard_study, tiny_standard, tmp_path):
    """study.eval_rule / study.eval_window: the study's stored val mIoU is its rule's (UniMatch V1, 48), and every
    other rule or window scores the same model differently."""
    from dataclasses import asdict

    from cityscapes_lab.config import TrainConfig
    from cityscapes_lab.study.tasks import TrainingTask, score_model

    data = load_prepared(tiny_standard)
    runtime = Runtime(torch.device("cpu"), channels_last=False)
    key = "ldt/run1/gen0/m00"
    model = load_model(StudyLayout(standard_study).training(GroupKey("ldt", 1)) / "m00" / "best.pt", runtime)
    figures = {}
    for rule, window in (("whole", 0), ("slide-unimatch-v1", 48), ("slide-unimatch-v1", 32), ("slide-shifted", 48),
                         ("center-crop", 32)):
        task = TrainingTask(key, 0, asdict(TrainConfig(model="deeplabv3plus_r50")), str(tiny_standard), "train",
                            str(tmp_path), eval_splits=("val",), eval_rule=rule, eval_window=window)
        figures[(rule, window)] = score_model(model, data, task, runtime)["val"]["miou"]
    assert len(set(figures.values())) == len(figures), figures
    assert figures[("slide-unimatch-v1", 48)] == pytest.approx(scores(standard_study)[key][1]["val"]["miou"],
                                                               abs=1e-12)


def test_the_best_epoch_is_picked_under_the_evaluation_rule(standard_study):
    """train.val_rule auto: every epoch is validated under the study's rule (UniMatch V1's windows, 48 here), as
    UniMatch picks its best epoch by its sliding-window val; so each model's stored val mIoU is its best epoch's.
    (Validated on whole images, the epochs' figures would be another rule's.)"""
    for key, (_, values) in scores(standard_study).items():
        lines = (standard_study / "models" / key / "history.csv").read_text().splitlines()
        column = lines[0].split(",").index("val_miou")
        epochs = [float(line.split(",")[column]) for line in lines[1:]]
        assert max(epochs) == pytest.approx(values["val"]["miou"], abs=1e-12), key


def test_the_validation_rule_follows_the_study_unless_it_is_set():
    from cityscapes_lab.config import TrainConfig
    from cityscapes_lab.engine.kinds import validation_rule

    auto, name = TrainConfig(), "deeplabv3plus_r50"
    assert validation_rule(auto, name) is None  # `train`: whole images
    rule = validation_rule(auto, name, "slide-unimatch-v1", 48)
    assert rule.mode == "slide" and rule.crop == (48, 48) and rule.combine == "unimatch"
    assert validation_rule(TrainConfig(val_rule="whole"), name, "slide-unimatch-v1", 48) is None
    crop = validation_rule(TrainConfig(val_rule="center-crop", val_window=32), name, "slide-unimatch-v1", 48)
    assert crop.mode == "whole" and crop.score_crop == (32, 32)
    with pytest.raises(ConfigError, match="train.val_window applies to a sliding"):
        TrainConfig(val_window=48)


def test_the_published_recipes_plan_on_the_command_line(tiny_standard, tmp_path, capsys):
    """configs/ssl-supervised.toml then configs/ssl-im.toml (later files override earlier ones): DeepLabV3+ R50,
    240 epochs of batch 8, 2 teachers and 2 generations of 2 students; the plan states the GPU-hours."""
    from oneline import run_cli

    ssl_im = RECIPE.with_name("ssl-im.toml")
    code, out, err = run_cli(["study", "--data", tiny_standard, "--out", tmp_path / "plan", "--approaches", "im",
                              "--config", RECIPE, "--config", ssl_im, "--set", "study.labeled_subset=1/2", "--plan",
                              "--throughput", "20"], capsys)
    assert code == 0, err
    assert "6 trainings" in out and "tens of GPU-hours" in out and "images of 801x801" in out
    # LDT: 240 epochs x (12 // 8 = 1) full batch x 8 images, for each of the 2 models
    assert "| ldt | 1 | - | 1 | 3 | 2 | 3,840 |" in out
    assert not (tmp_path / "plan").exists()


def test_the_labeled_subset_chooses_the_split_the_study_learns_from(raw_small, tmp_path):
    from cityscapes_lab.data.prepare import PrepareOptions, prepare

    prepare(raw_small, tmp_path / "prepared", PrepareOptions(protocol="standard", size=(128, 64),
                                                              split_family="seeded", fractions=("1/2", "1/4")),
            workers=1)
    quarter = describe_plan(tmp_path / "prepared", tmp_path / "plan", ["ldt"], config("study.labeled_subset=1/4"),
                            throughput=10.0)
    half = describe_plan(tmp_path / "prepared", tmp_path / "plan", ["ldt"], config(), throughput=10.0)
    # 6 of the 24 train images: 3 full batches of 2 an epoch (12 images: 6 batches)
    assert "| ldt | 1 | - | 1 | 3 | 2 | 24 |" in quarter and "| ldt | 1 | - | 1 | 3 | 2 | 48 |" in half


def test_local_processes_give_the_serial_scores(tiny_standard, tmp_path, standard_study):
    summary = run_study(tiny_standard, tmp_path / "study", ["im"], config(), show_progress=False, executor="local",
                        parallel=2)
    assert (summary.trained, summary.failed) == (6, 0)
    assert scores(tmp_path / "study") == scores(standard_study)


def test_ray_gives_the_serial_scores(tiny_standard, tmp_path, standard_study):
    ray = pytest.importorskip("ray")
    start_local_ray(num_cpus=2)
    try:
        summary = run_study(tiny_standard, tmp_path / "study", ["im"], config(), show_progress=False,
                            executor="ray", cpus_per_task=1)
    finally:
        ray.shutdown()
    assert (summary.trained, summary.failed) == (6, 0)
    assert scores(tmp_path / "study") == scores(standard_study)


def test_plan_counts_the_trainings_and_the_images_of_the_crops(tiny_standard, tmp_path):
    text = describe_plan(tiny_standard, tmp_path / "plan", ["im"], config(), throughput=10.0)
    assert "standard protocol" in text and "6 trainings" in text
    # an LDT model: 2 epochs x 6 full batches x 2 images; a student: 2 x 12 x 2 (12 labeled + 12 pseudo-labelled);
    # two of each per group, and a generation's tasks are its set, its students and its ranking
    assert "| ldt | 1 | - | 1 | 3 | 2 | 48 |" in text and "| im | 1 | 2 | 2 | 4 | 2 | 96 |" in text
    assert "sees 48 images of 64x64" in text and not (tmp_path / "plan").exists()


@pytest.mark.parametrize("extra, approaches, message", [
    (["study.labeled_subset="], ["ldt"], "study.labeled_subset is not set: choose the labeled subset"),
    (["study.labeled_subset=1/8"], ["ldt"], "one of 1/2"),
    ([], ["aldt"], "aldt runs on the paper protocol"),
    ([], ["me"], "me runs on the paper protocol"),
    (["semisup.im_label=im_class"], ["im"], "class 0 is road"),
    (["study.eval_rule=center-crop", "study.save_predictions=true"], ["ldt"], "centre crop"),
])
def test_what_a_standard_study_refuses(tiny_standard, tmp_path, extra, approaches, message):
    with pytest.raises(ConfigError, match=message):
        run_study(tiny_standard, tmp_path / "study", approaches, config(*extra), show_progress=False)
    assert not (tmp_path / "study").exists()


def test_the_paper_protocol_refuses_the_standard_settings(tiny_paper, tmp_path):
    for setting, message in (("study.labeled_subset=1/8", "applies to the standard protocol"),
                             ("study.eval_rule=slide-unimatch-v1", "paper protocol scores whole images"),
                             ("train.val_rule=slide-unimatch-v1", "picks the best epoch by the study's soft IoU"),
                             ("semisup.im_label=ignore", "no ignore label")):
        with pytest.raises(ConfigError, match=message):
            run_study(tiny_paper, tmp_path / "study", ["ldt"], load_config(overrides=[setting]), show_progress=False)
    assert not (tmp_path / "study").exists()
