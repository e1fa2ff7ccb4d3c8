"""The generation runner: executes any row of the recipe table (``semisup.recipes``), run by run, n by n,
generation by generation. A generation starts from the top models of the one before (generation 0 from the
baseline's); its training set is built once, atomically, and reused after a restart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import atomic
from ..data.arrays import load_arrays, load_extra, save_named
from ..data.prepared import SplitArrays
from ..models.checkpoints import save_checkpoint
from ..models.evalnet import EvalNet
from ..engine import kinds
from ..engine.inference import predict
from ..engine.runtime import Runtime
from ..engine.train import TrainingDiverged, train
from ..study.groups import StudyContext, make_task, rank_group, record, top_checkpoints, train_group
from ..study.keys import GroupKey, TrainingKey, derive_seed
from ..study.tasks import TaskResult
from . import evalnet as evalnets
from .consistency import STRENGTHS
from .pseudo import LabelingRule, SetParts, compose_set, label_batch, load_model, mask_sizes, write_pseudo_pairs
from .recipes import RECIPES, Recipe
from .rules import copies_for_score, generation_params


def n_values(recipe: Recipe, config) -> tuple[int, ...]:
    """The approach's n values, restricted to ``semisup.n`` when given (the smallest one when none is left)."""
    wanted = config.semisup.n
    if not wanted or len(recipe.n_values) == 1:
        return recipe.n_values
    return tuple(n for n in recipe.n_values if n in wanted) or (min(recipe.n_values),)


def planned_trainings(approach: str, config) -> int:
    """How many trainings an approach makes (for the study's progress bar)."""
    recipe = RECIPES[approach]
    per_run = len(n_values(recipe, config)) * (config.semisup.generations if recipe.generations else 1)
    nets = config.semisup.evalnets if recipe.evalnet else 0
    return config.study.runs * (per_run * config.semisup.students + nets)


def _rule(recipe: Recipe, n: int, ctx: StudyContext) -> LabelingRule:
    s = ctx.config.semisup
    if recipe.rule == "input_ensemble":
        return LabelingRule("input_ensemble", copies=n + 1, cumulative=s.ie_cumulative)
    return LabelingRule(recipe.rule, erode=s.im_erode, dilate=s.im_dilate, block_input=s.block_input,
                        block_output=s.block_output)


def _teacher_count(recipe: Recipe, n: int) -> int:
    return n if recipe.rule in ("ensemble", "im") else 1


def _source_group(recipe: Recipe, group: GroupKey) -> GroupKey:
    if group.generation == 0:
        return GroupKey(recipe.base, group.run)
    return GroupKey(group.approach, group.run, group.n, group.generation - 1)


def _labeled(ctx: StudyContext, recipe: Recipe) -> SplitArrays:
    if recipe.labeled == "aldt":
        return load_arrays(ctx.layout.dataset("aldt"))
    return ctx.data.split("train_labeled")


def _im_sizes(ctx: StudyContext, models, rule: LabelingRule, split_name: str, seed: int) -> dict[str, float]:
    """Mean inconsistency-mask size of the teachers on a split (for the report)."""
    split = ctx.data.split(split_name)
    runtime = Runtime.from_config(ctx.config.train)
    sizes = []
    for start in range(0, len(split), ctx.config.semisup.label_batch_size):
        rows = slice(start, start + ctx.config.semisup.label_batch_size)
        _, _, masks = label_batch(models, np.asarray(split.images[rows]), split.ids[rows], rule, runtime, seed)
        sizes.extend(mask_sizes(masks))
    pixels = split.images.shape[1] * split.images.shape[2]
    return {"mean_im_pixels": float(np.mean(sizes)), "mean_im_share": float(np.mean(sizes)) / pixels}


def build_set(ctx: StudyContext, recipe: Recipe, group: GroupKey, nets: list[Path]) -> Path:
    """The students' training set of a generation (pseudo pairs, copies, labeled data), built once."""
    folder = ctx.layout.dataset(str(group))
    final = folder / "set"
    if (final / "ids.json").exists():
        return final
    runtime = Runtime.from_config(ctx.config.train)
    seed = derive_seed(ctx.config.study.seed, str(group), "pseudo")
    teachers = [load_model(p, runtime) for p in top_checkpoints(ctx, _source_group(recipe, group),
                                                              _teacher_count(recipe, group.n))]
    rule = _rule(recipe, group.n, ctx)
    unlabeled = ctx.data.split("train_unlabeled")
    pairs = write_pseudo_pairs(folder / "pairs", teachers, unlabeled, rule, runtime, seed,
                               ctx.config.semisup.label_batch_size)
    stats: dict[str, dict[str, float]] = {}
    if rule.kind == "im":
        masks = load_extra(folder / "pairs", "masks")
        pixels = pairs.images.shape[1] * pairs.images.shape[2]
        sizes = mask_sizes(masks)
        stats["train_unlabeled"] = {"mean_im_pixels": float(sizes.mean()), "mean_im_share": float(sizes.mean()) / pixels}
        for split in ("val", "test"):
            stats[split] = _im_sizes(ctx, teachers, rule, split, seed)
    copies = None
    if recipe.augmented == "one":
        copies = np.ones(len(pairs), dtype=np.int64)
    elif recipe.augmented == "evalnet":
        scorers = [evalnets.load_evalnet(p, runtime) for p in nets[:2]]  # the study: the top-2 EvalNet-IM
        scores = evalnets.score_masks(scorers, pairs.images, pairs.labels,
                                      runtime.but(eval_batch_size=ctx.config.semisup.label_batch_size),
                                      classes=slice(1, None))
        s = ctx.config.semisup
        copies = np.array([copies_for_score(v, s.threshold_low, s.threshold_high) for v in scores], dtype=np.int64)
        stats["train_unlabeled"] = {**stats.get("train_unlabeled", {}), "mean_evalnet_score": float(scores.mean()),
                                    "mean_copies": float(copies.mean())}
    parts = SetParts(recipe.clean, copies, generation_params(group.generation if recipe.widen else 0).augment,
                     _labeled(ctx, recipe))
    atomic.write_json(folder / "stats.json", stats)
    compose_set(final, pairs, parts, seed)
    return final


def _stats(ctx: StudyContext, group: GroupKey) -> None:
    path = ctx.layout.dataset(str(group)) / "stats.json"
    if path.exists():
        ctx.store.set_group_stats(group, json.loads(path.read_text()))


def run_generation(ctx: StudyContext, recipe: Recipe, group: GroupKey, nets: list[Path]) -> None:
    keys = [TrainingKey(group, member) for member in range(ctx.config.semisup.students)]
    if all(ctx.store.status(k) in ("done", "failed") for k in keys):
        ctx.counts["skipped"] += len(keys)
        ctx.progress.skipped(len(keys))
        rank_group(ctx, group, keys)
        _stats(ctx, group)
        return
    if recipe.rule == "evalnet_selection":
        train_set, steps = select_masks(ctx, group, nets)
    else:
        train_set, steps = build_set(ctx, recipe, group, nets), 0
    _stats(ctx, group)
    alpha = generation_params(group.generation).alpha if recipe.widen else ctx.config.train.alpha
    tasks = [(key, make_task(ctx, key, str(train_set), train_alpha=alpha, train_steps_per_epoch=steps))
             for key in keys]
    train_group(ctx, group, tasks)


def run_consistency(ctx: StudyContext, group: GroupKey) -> None:
    """Consistency loss: ``semisup.students`` fine-tunings of the baseline's best model at strength n."""
    start = top_checkpoints(ctx, GroupKey("ldt", group.run), 1)[0]
    keys = [TrainingKey(group, member) for member in range(ctx.config.semisup.students)]
    tasks = [(key, make_task(ctx, key, "train_labeled", init_checkpoint=str(start),
                             consistency_views=STRENGTHS[group.n], consistency_epochs=ctx.config.semisup.cl_epochs))
             for key in keys]
    train_group(ctx, group, tasks)


def run_approach(ctx: StudyContext, approach: str) -> int:
    """Every group of an approach; returns the number of groups."""
    recipe = RECIPES[approach]
    groups = 0
    for run in range(1, ctx.config.study.runs + 1):
        nets = train_evalnets(ctx, approach, recipe, run) if recipe.evalnet else []
        for n in n_values(recipe, ctx.config):
            if recipe.rule == "consistency":
                run_consistency(ctx, GroupKey(approach, run, n, 0))
                groups += 1
                continue
            for generation in range(ctx.config.semisup.generations):
                run_generation(ctx, recipe, GroupKey(approach, run, n, generation), nets)
                groups += 1
    return groups


# --- EvalNets -------------------------------------------------------------------------------------------------


def _member_checkpoints(ctx: StudyContext, group: GroupKey) -> list[Path]:
    return [Path(row.checkpoint) for row in ctx.store.trainings(group.approach, group.role)
            if row.run == group.run and row.n == group.n and row.generation == group.generation
            and row.status == "done"]


def evalnet_rows(ctx: StudyContext, approach: str, recipe: Recipe, run: int) -> tuple[Path, Path]:
    """The EvalNets' training and validation rows of a run, built once (notes 5.8, 5.10)."""
    folder = ctx.layout.dataset(f"{GroupKey(approach, run, role='evalnets')}")
    train_folder, val_folder = folder / "train", folder / "val"
    if (train_folder / "ids.json").exists() and (val_folder / "ids.json").exists():
        return train_folder, val_folder
    runtime = Runtime.from_config(ctx.config.train)
    s = ctx.config.semisup
    labeled, val = ctx.data.split("train_labeled"), ctx.data.split("val")
    seed = derive_seed(ctx.config.study.seed, approach, run, "evalnet-data")
    if recipe.evalnet == "miou":
        ldt, aldt = (_member_checkpoints(ctx, GroupKey(b, run)) for b in ("ldt", "aldt"))
        train_rows = evalnets.candidate_rows(ldt + aldt, labeled, ctx.data.num_classes, runtime)
        val_models = ldt[:s.evalnet_val_models] + aldt[:s.evalnet_val_models]
        val_rows = evalnets.candidate_rows(val_models, val, ctx.data.num_classes, runtime)
    else:
        models = _member_checkpoints(ctx, GroupKey("ldt" if recipe.evalnet == "im" else "aldt", run))
        train_rows = evalnets.im_rows(models, labeled, s.evalnet_train_loops, ctx.data.num_classes, seed, runtime)
        val_rows = evalnets.im_rows(models, val, s.evalnet_val_loops, ctx.data.num_classes, seed + 1, runtime)
    evalnets.save_rows(train_folder, train_rows)
    evalnets.save_rows(val_folder, val_rows)
    return train_folder, val_folder


def train_evalnets(ctx: StudyContext, approach: str, recipe: Recipe, run: int) -> list[Path]:
    """Train ``semisup.evalnets`` EvalNets for a run (each a row of the database), ranked by validation loss;
    returns the ranked checkpoints (``top1.pt`` ...)."""
    import time

    group = GroupKey(approach, run, role="evalnets")
    keys = [TrainingKey(group, member) for member in range(ctx.config.semisup.evalnets)]
    pending = [k for k in keys if ctx.store.status(k) not in ("done", "failed")]
    if pending:
        train_folder, val_folder = evalnet_rows(ctx, approach, recipe, run)
        rows, val_rows = evalnets.load_rows(train_folder), evalnets.load_rows(val_folder)
        runtime = Runtime.from_config(ctx.config.train)
    for key in keys:
        if key not in pending:
            ctx.counts["skipped"] += 1
            ctx.progress.skipped()
            continue
        seed = derive_seed(ctx.config.study.seed, str(key))
        ctx.store.start(key, seed, ctx.config.digest())
        out = ctx.layout.training(key)
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            torch.manual_seed(seed)
            model = EvalNet(ctx.data.num_classes)
            training = kinds.evalnet(model, rows, val_rows, ctx.config.train, runtime,
                                     epochs=ctx.config.semisup.evalnet_epochs, seed=seed)
            result = train(model, training, ctx.config.train, runtime, checkpoint=out / "last.pt", desc=str(key),
                           show_progress=ctx.show_progress)
        except TrainingDiverged as exc:
            record(ctx, key, TaskResult(str(key), "failed", time.perf_counter() - start, error=str(exc)))
            continue
        state, figures, epochs = result.best_state, result.best, result.epochs
        save_checkpoint(out / "best.pt", {"model_name": "evalnet", "num_classes": ctx.data.num_classes,
                                          "state_dict": state, "key": str(key), "val": figures})
        (out / "last.pt").unlink(missing_ok=True)
        record(ctx, key, TaskResult(str(key), "done", time.perf_counter() - start, epochs, None,
                                    str(out / "best.pt"), None, {"val": figures}))
    ranked = rank_group(ctx, group, keys, "val", "total_loss", higher_is_better=False)
    return [ctx.layout.training(key) / "best.pt" for key in ranked]


def select_masks(ctx: StudyContext, group: GroupKey, nets: list[Path]) -> tuple[Path, int]:
    """The EvalNet approach's selection (notes 5.8): score every candidate mask of every unlabeled image with the
    top-n EvalNets; keep an image's best candidate when it scores at least ``semisup.threshold_high``, replacing
    its earlier mask. Candidates: generation 0, the predictions of every LDT model; later, those of the previous
    generation's students and the mask selected before. The selected set only grows. Returns the training set
    and its steps per epoch, max(train_full // batch // 3, set // batch) as the study."""
    folder = ctx.layout.dataset(str(group))
    final = folder / "set"
    config = ctx.config
    batch = config.train.batch_size
    if not (final / "ids.json").exists():
        runtime = Runtime.from_config(config.train)
        scorers = [evalnets.load_evalnet(p, runtime) for p in nets[:group.n]]
        unlabeled = ctx.data.split("train_unlabeled")
        source = (GroupKey("ldt", group.run) if group.generation == 0
                  else GroupKey(group.approach, group.run, group.n, group.generation - 1))
        best_score = np.full(len(unlabeled), -np.inf)
        best_mask = np.zeros(unlabeled.images.shape[:3], dtype=np.uint8)
        for path in _member_checkpoints(ctx, source):
            masks = predict(load_model(path, runtime), unlabeled.images, runtime)
            scores = evalnets.score_masks(scorers, unlabeled.images, masks,
                                          runtime.but(eval_batch_size=config.semisup.label_batch_size))
            better = scores > best_score
            best_score[better], best_mask[better] = scores[better], masks[better]
        selected = np.zeros(len(unlabeled), dtype=bool)
        if group.generation > 0:
            previous = ctx.layout.dataset(str(source)) / "selection"
            selected = np.asarray(load_extra(previous, "selected")).copy()
            previous_masks = np.asarray(load_extra(previous, "masks"))
            previous_scores = np.asarray(load_extra(previous, "scores"))
            keep_old = selected & (previous_scores >= best_score)
            best_score[keep_old], best_mask[keep_old] = previous_scores[keep_old], previous_masks[keep_old]
        chosen = best_score >= config.semisup.threshold_high
        selected |= chosen
        save_named(folder / "selection", unlabeled.ids, masks=best_mask, selected=selected, scores=best_score)
        rows = np.flatnonzero(selected)
        picked = SplitArrays("selected", [unlabeled.ids[i] for i in rows], unlabeled.images.subset(rows)
                             if hasattr(unlabeled.images, "subset") else unlabeled.images[rows], best_mask[rows])
        atomic.write_json(folder / "stats.json", {"train_unlabeled": {
            "selected_images": float(selected.sum()), "mean_selected_score": float(best_score[selected].mean())
            if selected.any() else 0.0}})
        compose_set(final, picked, SetParts(True, None, generation_params(0).augment,
                                           ctx.data.split("train_labeled")), 0)
    size = len(load_arrays(final))
    return final, max(len(ctx.data.splits["train_full"]) // batch // 3, size // batch, 1)
