"""The study runner on tiny data: records, top-K, report, failures, settings checks, and resume after kill -9."""

import json
from pathlib import Path

import numpy as np
import pytest

from cityscapes_lab.config import load_config
from cityscapes_lab.data.arrays import load_arrays
from cityscapes_lab.errors import ConfigError
from cityscapes_lab.report import write_report
from cityscapes_lab.study import tasks as tasks_module
from cityscapes_lab.study.approaches import augmented_set
from cityscapes_lab.study.keys import GroupKey, StudyLayout
from cityscapes_lab.semisup.study import run_study
from cityscapes_lab.study.store import ResultStore

TINY = ["study.runs=1", "study.models=3", "study.top_k=2", "train.epochs=2", "train.batch_size=2",
        "train.threads=1", "aldt.copies=2"]


@pytest.fixture(scope="module")
def finished_study(tiny_paper, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "runs"
    summary = run_study(tiny_paper, out, ["fdt", "ldt", "aldt"], load_config(overrides=TINY), show_progress=False)
    assert (summary.trained, summary.skipped, summary.failed, summary.groups) == (9, 0, 0, 3)
    return out


def test_every_training_is_a_row_with_both_metric_families(finished_study):
    with ResultStore(StudyLayout(finished_study).database) as store:
        rows = store.trainings()
        assert len(rows) == 9 and {r.status for r in rows} == {"done"}
        assert {(r.approach, r.member) for r in rows} == {(a, m) for a in ("fdt", "ldt", "aldt") for m in range(3)}
        assert len({r.seed for r in rows}) == 9 and len({r.config_hash for r in rows}) == 1
        for row in rows:
            scores = store.scores(row.key)
            assert set(scores) == {"val", "test", "train_unlabeled"}
            for split in scores.values():
                assert 0 <= split["paper_miou"] <= 1 and 0 <= split["paper_mpa"] <= 1 and 0 <= split["miou"] <= 1
            assert "iiou" in scores["val"]  # val and test come from the official val split, with instance ids
            assert row.seconds > 0 and row.epochs == 2 and Path(row.checkpoint).exists()


def test_top_k_follows_the_val_ranking(finished_study):
    layout = StudyLayout(finished_study)
    with ResultStore(layout.database) as store:
        for approach in ("fdt", "ldt", "aldt"):
            group = GroupKey(approach, 1)
            ranking = store.ranking(group)
            assert len(ranking) == 3
            val_scores = [store.scores(key)["val"]["paper_miou"] for key, _ in ranking]
            assert val_scores == sorted(val_scores, reverse=True)
            for rank in (1, 2):
                top = layout.top(group, rank)
                best = Path(layout.root / "models" / ranking[rank - 1][0] / "best.pt")
                assert top.read_bytes() == best.read_bytes()
            assert not layout.top(group, 3).exists()


def test_training_curves_and_no_leftover_resume_points(finished_study):
    for history in StudyLayout(finished_study).root.glob("models/*/run1/gen0/m*/history.csv"):
        lines = history.read_text().splitlines()
        assert lines[0] == "epoch,loss,val_score,lr,seconds" and len(lines) == 3  # lr: the schedule
    assert not list(finished_study.glob("models/**/last.pt"))


def test_report_files(finished_study):
    files = write_report(finished_study)
    table = files.table_md.read_text()
    assert files.main_table.startswith("| approach |") and files.main_table in table  # what the demo prints
    assert "stand-ins" in table and "| FDT |" in table and "| LDT |" in table and "| ALDT |" in table
    assert files.table_csv.read_text().splitlines()[0].startswith("approach,n,generation,runs,models")
    assert files.figure.stat().st_size > 10_000 and files.panel.stat().st_size > 10_000


def test_rerun_redoes_nothing(finished_study, tiny_paper):
    summary = run_study(tiny_paper, finished_study, ["fdt", "ldt", "aldt"], load_config(overrides=TINY),
                        show_progress=False)
    assert (summary.trained, summary.skipped) == (0, 9)


def test_other_settings_or_approaches_are_refused(finished_study, tiny_paper):
    with pytest.raises(ConfigError, match="started with other settings"):
        run_study(tiny_paper, finished_study, ["ldt"], load_config(overrides=TINY + ["train.epochs=3"]),
                  show_progress=False)
    with pytest.raises(ConfigError, match="unknown approach xyz"):
        run_study(tiny_paper, finished_study, ["xyz"], load_config(overrides=TINY), show_progress=False)


def test_aldt_set_has_originals_then_copies(finished_study, tiny_paper):
    aldt = load_arrays(StudyLayout(finished_study).dataset("aldt"))
    assert len(aldt) == 4 * 3 and aldt.ids[4] == aldt.ids[0] + "_aug_0" and aldt.ids[5] == aldt.ids[0] + "_aug_1"
    from cityscapes_lab import load_prepared

    labeled = load_prepared(tiny_paper).split("train_labeled")
    assert np.array_equal(aldt.images[:4], labeled.images)
    again = augmented_set(labeled, load_config(overrides=TINY).aldt, 0)
    assert np.array_equal(again.images, aldt.images)


def test_a_diverging_training_is_marked_failed_and_the_study_goes_on(tiny_paper, tmp_path, monkeypatch, capsys):
    original = tasks_module.train

    def diverge_for_member_1(model, training, config, runtime, **kw):
        if kw["desc"].endswith("m01"):
            from cityscapes_lab.engine.train import TrainingDiverged
            raise TrainingDiverged("the training loss became nan in steps 0..1")
        return original(model, training, config, runtime, **kw)

    monkeypatch.setattr(tasks_module, "train", diverge_for_member_1)
    said = []
    summary = run_study(tiny_paper, tmp_path / "runs", ["ldt"], load_config(overrides=TINY), log=said.append)
    assert (summary.trained, summary.failed) == (3, 1)
    # said once: in the progress line on stderr (not a terminal here), not again by the log
    told = capsys.readouterr().err + "\n".join(said)
    assert told.count("the training loss became nan") == 1 and "ldt/run1/gen0/m01: failed: the training" in told
    with ResultStore(tmp_path / "runs" / "results.sqlite") as store:
        statuses = {r.member: (r.status, r.error) for r in store.trainings()}
        assert statuses[1] == ("failed", "the training loss became nan in steps 0..1")
        assert statuses[0][0] == statuses[2][0] == "done"
        assert [key.rsplit("/", 1)[1] for key, _ in store.ranking(GroupKey("ldt", 1))] in (["m00", "m02"],
                                                                                          ["m02", "m00"])


def test_kill_minus_9_in_the_middle_of_a_training_then_resume(tiny_paper, tmp_path, cli_process):
    """Killed after the 2nd epoch of the 2nd training (of 2 with 3 epochs each), the same command continues:
    the finished training is not redone, the killed one resumes at epoch 3, and every score equals an
    uninterrupted study's."""
    settings = TINY + ["study.models=2", "train.epochs=3"]
    args = ["study", "--data", str(tiny_paper), "--approaches", "ldt"] + [x for s in settings for x in ("--set", s)]
    killed = cli_process([*args, "--out", str(tmp_path / "killed")], kill_after_epoch_saves=5)
    assert killed.returncode == -9, killed.stderr[-2000:]
    layout = StudyLayout(tmp_path / "killed")
    first, second = layout.root / "models/ldt/run1/gen0/m00", layout.root / "models/ldt/run1/gen0/m01"
    assert (first / "result.json").exists() and not (second / "result.json").exists()
    assert (second / "last.pt").exists()
    finished_at = (first / "result.json").stat().st_mtime_ns
    with ResultStore(layout.database) as store:
        assert [r.status for r in store.trainings()] == ["done", "running"]

    resumed = cli_process([*args, "--out", str(tmp_path / "killed")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "1 trainings run now, 1 already finished" in resumed.stdout
    assert (first / "result.json").stat().st_mtime_ns == finished_at
    history = (second / "history.csv").read_text().splitlines()
    assert len(history) == 4  # epochs 1-2 from before the kill, epoch 3 after it

    clean = cli_process([*args, "--out", str(tmp_path / "clean")])
    assert clean.returncode == 0, clean.stderr[-2000:]
    with ResultStore(layout.database) as a, ResultStore(tmp_path / "clean" / "results.sqlite") as b:
        assert len(a.trainings()) == len(b.trainings()) == 2
        for row in b.trainings():
            ours, clean_scores = a.scores(row.key), b.scores(row.key)
            assert set(ours) == set(clean_scores)
            for split in ours:
                assert ours[split] == pytest.approx(clean_scores[split], abs=1e-9, nan_ok=True)
    assert json.loads((second / "result.json").read_text())["status"] == "done"


# --- bad input and settings: one line, before anything is written ---------------------------------------------

def test_settings_typos_are_refused_before_the_folder_exists(tiny_paper, tmp_path, capsys):
    from oneline import expect_error

    out = tmp_path / "runs"
    args = ["study", "--data", tiny_paper, "--out", out, "--approaches", "ldt"]
    for setting, mentions in (("train.device=cuda", ("train.device", "cpu")),
                              ("train.device=tpu", ("train.device", "cpu")),
                              ("train.model=unet_papper", ("unet_papper", "unet_paper")),
                              ("study.eval_splits=val,tset", ("study.eval_splits", "'tset'", "train_labeled"))):
        expect_error([*args, "--set", setting], capsys, *mentions)
        assert not out.exists(), setting


def test_a_changed_setting_is_named_and_result_neutral_settings_are_not_changes(tiny_paper, tmp_path, capsys):
    from oneline import expect_error, run_cli

    out = tmp_path / "runs"
    args = ["study", "--data", tiny_paper, "--out", out, "--approaches", "ldt", "--set", "study.runs=1", "--set",
            "study.models=1", "--set", "study.top_k=1", "--set", "train.epochs=1", "--set", "train.batch_size=2"]
    code, printed, err = run_cli([*args, "--set", "train.threads=1"], capsys)
    assert code == 0 and "1 trainings run now" in printed, err
    # Thread counts, validation batch size and saved predictions do not change results: the study continues.
    code, printed, err = run_cli([*args, "--set", "train.threads=2", "--set", "train.eval_batch_size=3",
                                  "--save-predictions"], capsys)
    assert code == 0 and "0 trainings run now, 1 already finished" in printed, err
    line = expect_error([*args, "--set", "train.lr=0.01"], capsys, "started with other settings", "train.lr")
    assert "train.threads" not in line and "train.epochs" not in line


def test_truncated_array_in_the_data_folder(tiny_paper, tmp_path, capsys):
    import shutil

    from oneline import expect_error

    data = tmp_path / "prepared"
    shutil.copytree(tiny_paper, data)
    images = data / "arrays" / "train.images.npy"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    expect_error(["study", "--data", data, "--out", tmp_path / "runs", "--approaches", "ldt"], capsys,
                 str(images), "prepare")
    assert not (tmp_path / "runs").exists()


def test_corrupt_results_database(tiny_paper, finished_study, tmp_path, capsys):
    import shutil

    from oneline import expect_error

    runs = tmp_path / "runs"
    shutil.copytree(finished_study, runs)
    database = runs / "results.sqlite"
    database.write_bytes(b"this is not a database" * 100)
    for args in (["study", "--data", tiny_paper, "--out", runs, "--approaches", "ldt"], ["report", runs]):
        expect_error(args, capsys, str(database))
    assert database.read_bytes() == b"this is not a database" * 100


def test_report_while_nothing_is_finished(tiny_paper, tmp_path, cli_process, capsys):
    from oneline import expect_error

    settings = TINY + ["study.models=1"]
    args = ["study", "--data", str(tiny_paper), "--approaches", "ldt", "--out", str(tmp_path / "runs")]
    killed = cli_process(args + [x for s in settings for x in ("--set", s)], kill_after_epoch_saves=1)
    assert killed.returncode == -9, killed.stderr[-2000:]
    expect_error(["report", tmp_path / "runs"], capsys, "no training has finished yet", "1 started")
    assert not (tmp_path / "runs" / "report").exists()


def test_without_a_terminal_each_finished_training_is_a_line_on_stderr_and_in_the_log(tiny_paper, tmp_path,
                                                                                        cli_process):
    import re

    settings = TINY + ["study.models=2"]
    result = cli_process(["study", "--data", str(tiny_paper), "--approaches", "ldt", "--out", str(tmp_path / "runs")]
                         + [x for s in settings for x in ("--set", s)])
    assert result.returncode == 0, result.stderr[-2000:]
    pattern = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ldt/run1/gen0/m0(\d): val mIoU 0\.\d{4} in [\d.]+ s; (\d)/2 finished, "
    lines = [line for line in result.stderr.splitlines() if re.match(pattern, line)]
    assert [re.match(pattern, line).groups() for line in lines] == [("0", "1"), ("1", "2")], result.stderr
    assert "1 left, about" in lines[0] and lines[1].endswith("0 left")
    log = (tmp_path / "runs" / "study.log").read_text().splitlines()
    assert log[0].endswith("study: 2 trainings planned, 0 finished before") and log[1:] == lines
