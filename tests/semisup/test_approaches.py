"""Every semi-supervised approach end to end on tiny data (2 generations, 2 students, 1 epoch), and checks of
their mechanics, not only that they ran."""

import json

import numpy as np
import pytest
import torch

from cityscapes_lab.config import load_config
from cityscapes_lab.data.arrays import load_arrays, load_extra
from cityscapes_lab.engine import kinds, sources
from cityscapes_lab.engine.runtime import Runtime
from cityscapes_lab.engine.train import train
from cityscapes_lab.models.checkpoints import load_checkpoint
from cityscapes_lab.report import write_report
from cityscapes_lab.semisup import consistency
from cityscapes_lab.semisup.evalnet import load_evalnet, score_masks
from cityscapes_lab.semisup.pseudo import load_model, probabilities
from cityscapes_lab.semisup.rules import copies_for_score
from cityscapes_lab.study.keys import GroupKey, StudyLayout
from cityscapes_lab.semisup.study import run_study
from cityscapes_lab.study.store import ResultStore

TINY = ["study.runs=1", "study.models=3", "study.top_k=3", "train.epochs=1", "train.batch_size=2", "train.threads=1",
        "aldt.copies=2", "semisup.students=2", "semisup.generations=2", "semisup.n=2", "semisup.evalnets=2",
        "semisup.evalnet_epochs=1", "semisup.cl_epochs=1", "semisup.evalnet_train_loops=1",
        "semisup.evalnet_val_loops=1", "semisup.evalnet_val_models=1"]
ALL = ["cl", "me", "ie", "ns", "im", "evalnet", "im+", "im++", "aim+", "aim++"]
CPU = Runtime.cpu()


@pytest.fixture(scope="module")
def study(tiny_paper, tmp_path_factory):
    out = tmp_path_factory.mktemp("semisup") / "runs"
    summary = run_study(tiny_paper, out, ALL, load_config(overrides=TINY), show_progress=False)
    # baselines 2 x 3, evalnets 3 x 2, cl 1 group x 2, nine approaches x 2 generations x 2 students
    assert (summary.trained, summary.failed) == (6 + 6 + 2 + 9 * 2 * 2, 0)
    return StudyLayout(out)


def unlabeled(tiny_paper):
    from cityscapes_lab import load_prepared

    return load_prepared(tiny_paper).split("train_unlabeled")


def teacher_outputs(layout, group, count, split):
    models = [load_model(layout.top(group, k), CPU) for k in range(1, count + 1)]
    return probabilities(models, np.asarray(split.images), CPU).numpy()


def test_every_approach_ran_every_generation(study):
    with ResultStore(study.database) as store:
        groups = {(r.approach, r.n, r.generation) for r in store.trainings(role="models") if r.status == "done"}
        evalnet_groups = {(r.approach, r.n, r.generation) for r in store.trainings(role="evalnets")
                          if r.status == "done"}
    for approach, n in [("me", 2), ("ie", 3), ("ns", 1), ("im", 2), ("evalnet", 2), ("im+", 2), ("im++", 2),
                        ("aim+", 2), ("aim++", 2)]:
        assert {(approach, n, 0), (approach, n, 1)} <= groups, approach
    assert ("cl", 2, 0) in groups and ("evalnet", 0, 0) in evalnet_groups


def test_im_sets_hold_the_im_class_where_teachers_disagree_and_black_out_the_input(study, tiny_paper):
    split = unlabeled(tiny_paper)
    predicted = teacher_outputs(study, GroupKey("ldt", 1), 2, split).argmax(axis=2)  # (2, N, H, W)
    disagree = predicted[0] != predicted[1]
    folder = study.dataset(str(GroupKey("im", 1, 2, 0)))
    pairs = load_arrays(folder / "pairs")
    assert np.array_equal(np.asarray(load_extra(folder / "pairs", "masks")), disagree)
    labels, images = np.asarray(pairs.labels), np.asarray(pairs.images)
    assert np.all(labels[disagree] == 0) and np.array_equal(labels[~disagree], predicted[0][~disagree])
    assert np.all(images[disagree] == 0) and np.array_equal(images[~disagree], np.asarray(split.images)[~disagree])
    assert not (folder / "pairs" / "images.npy").exists()  # the prepared images, blanked by the masks as read
    students_set = load_arrays(folder / "set")
    assert len(students_set) == 4 + len(split)  # the labeled originals plus the IM pairs
    assert np.array_equal(np.asarray(students_set.labels)[4:], labels)


def test_model_ensemble_labels_are_the_argmax_of_mean_probabilities(study, tiny_paper):
    split = unlabeled(tiny_paper)
    mean = teacher_outputs(study, GroupKey("ldt", 1), 2, split).mean(axis=0)
    pairs = load_arrays(study.dataset(str(GroupKey("me", 1, 2, 0))) / "pairs")
    assert np.array_equal(np.asarray(pairs.labels), mean.argmax(axis=1))
    assert np.array_equal(np.asarray(pairs.images), np.asarray(split.images))  # clean images
    # the unchanged images are links to the prepared data, not a copy
    assert not (study.dataset(str(GroupKey("me", 1, 2, 0))) / "pairs" / "images.npy").exists()


def test_the_plans_disk_estimates_match_what_the_study_wrote(study, tiny_paper):
    """study --plan's disk figures: each step's estimate against the files it left, to within the files' headers
    (but IM++ and AIM++, whose 1-5 copies per pair the plan puts at 3)."""
    from cityscapes_lab import load_prepared
    from cityscapes_lab.semisup.plan import plan_study
    from cityscapes_lab.semisup.study import resolve_approaches

    def size(folder):
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name != "stats.json")

    baselines, approaches = resolve_approaches(ALL)
    plan = plan_study(baselines, approaches, load_config(overrides=TINY), load_prepared(tiny_paper), study)
    checked = 0
    for node in plan.nodes:
        if node.kind == "set":
            actual, estimate = size(study.dataset(str(node.group))), node.disk
            if node.group.approach in ("im++", "aim++"):
                continue
            assert actual == pytest.approx(estimate, rel=0.02, abs=4096), node.id  # abs: ids.json, links
            checked += 1
        elif node.kind in ("aldt", "rows"):
            folder = study.dataset("aldt" if node.kind == "aldt" else str(node.group))
            assert size(folder) == pytest.approx(node.disk, rel=0.02, abs=4096), node.id
    assert checked == 2 * 7  # me, ie, ns, im, evalnet, im+, aim+ over 2 generations
    checkpoints = sum(p.stat().st_size for p in study.root.glob("models/**/best.pt"))
    assert checkpoints == pytest.approx(sum(node.disk for node in plan.trainings), rel=0.05)


def test_generation_one_is_taught_by_generation_zeros_top_students(study, tiny_paper):
    split = unlabeled(tiny_paper)
    predicted = teacher_outputs(study, GroupKey("im", 1, 2, 0), 2, split).argmax(axis=2)
    masks = np.asarray(load_extra(study.dataset(str(GroupKey("im", 1, 2, 1))) / "pairs", "masks"))
    assert np.array_equal(masks, predicted[0] != predicted[1])


def test_noisy_student_widths_follow_the_schedule(study):
    for generation, alpha in ((0, 1.0), (1, 1.25)):
        saved = load_checkpoint(study.top(GroupKey("ns", 1, 1, generation), 1))
        assert saved["model_options"]["alpha"] == alpha
    assert load_checkpoint(study.top(GroupKey("im", 1, 2, 1), 1))["model_options"]["alpha"] == 1.0  # IM: no widening
    ns_set = load_arrays(study.dataset(str(GroupKey("ns", 1, 1, 0))) / "set")
    assert all(i.endswith("_aug_0") for i in ns_set.ids[4:]) and len(ns_set) == 4 + 12  # one augmented copy each


def test_im_plus_plus_copy_counts_follow_the_evalnet_score(study):
    folder = study.dataset(str(GroupKey("im++", 1, 2, 0)))
    pairs = load_arrays(folder / "pairs")
    with ResultStore(study.database) as store:
        ranked = [key for key, _ in store.ranking(GroupKey("im++", 1, role="evalnets"))]
    nets = [load_evalnet(study.root / "models" / key / "best.pt", CPU) for key in ranked[:2]]
    scores = score_masks(nets, pairs.images, pairs.labels, CPU.but(eval_batch_size=4), classes=slice(1, None))
    expected = [copies_for_score(score) for score in scores]
    ids = load_arrays(folder / "set").ids[4:]
    counted = [sum(1 for i in ids if i.startswith(image_id + "_aug_")) for image_id in pairs.ids]
    assert counted == expected and 1 <= min(expected) and max(expected) <= 5


def test_aim_plus_sets_contain_the_aldt_set_and_the_clean_pairs(study):
    aldt = load_arrays(study.dataset("aldt"))
    folder = study.dataset(str(GroupKey("aim+", 1, 2, 0)))
    students_set, pairs = load_arrays(folder / "set"), load_arrays(folder / "pairs")
    assert students_set.ids[:len(aldt)] == aldt.ids
    assert np.array_equal(np.asarray(students_set.images[:len(aldt)]), np.asarray(aldt.images))
    clean = students_set.ids[len(aldt):len(aldt) + len(pairs)]
    assert clean == pairs.ids and len(students_set) == len(aldt) + 2 * len(pairs)


def test_evalnet_selection_keeps_masks_above_the_threshold_and_only_grows(study):
    first = study.dataset(str(GroupKey("evalnet", 1, 2, 0))) / "selection"
    second = study.dataset(str(GroupKey("evalnet", 1, 2, 1))) / "selection"
    selected, scores = np.asarray(load_extra(first, "selected")), np.asarray(load_extra(first, "scores"))
    assert np.array_equal(selected, scores >= 0.453)
    assert np.all(np.asarray(load_extra(second, "selected"))[selected])
    students_set = load_arrays(study.dataset(str(GroupKey("evalnet", 1, 2, 0))) / "set")
    assert len(students_set) == 4 + int(selected.sum())


def test_report_shows_every_approach_and_the_im_sizes(study):
    table = write_report(study.root).table_md.read_text()
    for label in ("Consistency Loss", "Model Ensemble", "Input Ensemble", "Noisy Student", "| IM |", "EvalNet",
                  "IM+", "IM++", "AIM+", "AIM++"):
        assert label in table, label
    assert "mean IM size" in table and "mean_im_share" in table and "## EvalNets" in table


def test_consistency_loss_sees_rgb_on_both_branches(tiny_paper, monkeypatch):
    """A pure red image stays red in both views (the original fed the unlabeled branch BGR)."""
    red = np.zeros((2, 32, 64, 3), np.uint8)
    red[..., 0] = 200
    views = sources.two_views(red, ["a", "b"], consistency.STRENGTHS[3], seed=0, step=0)
    for view in views:
        assert (view[..., 0].astype(int) - view[..., 2].astype(int)).mean() > 100
    seen = []
    original = sources.two_views

    def spy(images, ids, params, seed, step):
        a, b = original(images, ids, params, seed, step)
        seen.append((images, a, b))
        return a, b

    monkeypatch.setattr(sources, "two_views", spy)
    from cityscapes_lab import load_prepared
    from cityscapes_lab.config import TrainConfig
    from cityscapes_lab.models import build_model

    data = load_prepared(tiny_paper)
    model = build_model("unet_paper", 35)
    inputs = []
    model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    config = TrainConfig(batch_size=4, eval_batch_size=8)
    runtime = Runtime.from_config(config, torch.device("cpu"))
    training = kinds.consistency(model, data.split("train_labeled"), data.split("train_unlabeled"),
                                 data.split("val"), consistency.STRENGTHS[1], config, runtime, epochs=1, seed=0)
    train(model, training, config, runtime, checkpoint=tiny_paper.parent / "cl-test.pt", show_progress=False)
    (tiny_paper.parent / "cl-test.pt").unlink()
    unlabeled_images = np.asarray(data.split("train_unlabeled").images)
    for images, a, b in seen:
        assert any(np.array_equal(images[0], u) for u in unlabeled_images)  # RGB arrays straight from the data
    fed = [x for x in inputs if x.shape[0] == seen[0][1].shape[0] and x.dtype == torch.uint8]
    first_view = torch.from_numpy(seen[0][1]).permute(0, 3, 1, 2)
    assert any(torch.equal(x, first_view) for x in fed)  # the network received the RGB view unchanged


def test_kill_in_generation_two_resumes_correctly(tiny_paper, tmp_path, cli_process):
    """IM with 2 generations of 2 students and 2 epochs after LDT (3 models): epoch checkpoints 1-6 are LDT's,
    7-10 generation 1's, 11 is the 1st epoch of generation 2's first student: killed there, then resumed."""
    settings = [s for s in TINY if not s.startswith("train.epochs")] + ["train.epochs=2"]
    args = ["study", "--data", str(tiny_paper), "--approaches", "im"] + [x for s in settings for x in ("--set", s)]
    killed = cli_process([*args, "--out", str(tmp_path / "killed")], kill_after_epoch_saves=11)
    assert killed.returncode == -9, killed.stderr[-2000:]
    layout = StudyLayout(tmp_path / "killed")
    assert (layout.dataset(str(GroupKey("im", 1, 2, 1))) / "set" / "ids.json").exists()
    with ResultStore(layout.database) as store:
        statuses = {(r.approach, r.generation, r.member): r.status for r in store.trainings()}
    assert statuses[("im", 0, 1)] == "done" and statuses[("im", 1, 0)] == "running"
    resumed = cli_process([*args, "--out", str(tmp_path / "killed")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 trainings run now, 5 already finished" in resumed.stdout
    clean = cli_process([*args, "--out", str(tmp_path / "clean")])
    assert clean.returncode == 0, clean.stderr[-2000:]
    with ResultStore(layout.database) as a, ResultStore(tmp_path / "clean" / "results.sqlite") as b:
        assert [r.key for r in a.trainings()] == [r.key for r in b.trainings()]
        for row in b.trainings():
            ours, theirs = a.scores(row.key), b.scores(row.key)
            for split in theirs:
                assert ours[split] == pytest.approx(theirs[split], abs=1e-9, nan_ok=True), row.key
    assert json.loads((layout.dataset(str(GroupKey("im", 1, 2, 1))) / "stats.json").read_text())


def test_pseudo_labelled_sets_export_to_the_studys_png_layout(study, tmp_path, capsys):
    from cityscapes_lab.cli import main
    from cityscapes_lab.data import png

    folder = study.dataset(str(GroupKey("im", 1, 2, 0))) / "pairs"
    with pytest.raises(SystemExit) as exited:
        main(["export-png", str(folder), "--out", str(tmp_path / "png")])
    assert exited.value.code == 0 and "wrote 12 pairs" in capsys.readouterr().out
    pairs, masks = load_arrays(folder), np.asarray(load_extra(folder, "masks"))
    first = pairs.ids[0]
    assert np.array_equal(png.decode((tmp_path / "png" / "masks" / f"{first}.png").read_bytes()),
                          np.asarray(pairs.labels[0]))
    assert np.array_equal(png.decode((tmp_path / "png" / "im" / f"{first}.png").read_bytes()) > 0, masks[0])


def test_evalnet_validation_runs_one_forward_pass_per_batch():
    from cityscapes_lab.models.evalnet import EvalNet
    from cityscapes_lab.engine.validation import evalnet_figures
    from cityscapes_lab.semisup.evalnet import EvalNetRows

    rng = np.random.default_rng(0)
    rows = EvalNetRows(images=rng.integers(0, 256, (2, 16, 16, 3), np.uint8), image_index=np.array([0, 1, 0, 1, 0]),
                       masks=rng.integers(0, 35, (5, 16, 16), np.uint8),
                       iou=rng.random((5, 35), np.float32), detection=(rng.random((5, 35)) > 0.5).astype(np.float32))
    torch.manual_seed(0)
    model = EvalNet(35, alpha=0.25)
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    figures = evalnet_figures(model, rows, Runtime.cpu(eval_batch_size=2))
    assert calls == [2, 2, 1]  # three batches, one pass each
    assert figures["total_loss"] == pytest.approx(figures["iou_loss"] + figures["detection_loss"])
    assert 0 <= figures["detection_accuracy"] <= 1 and figures["iou_mae"] > 0
