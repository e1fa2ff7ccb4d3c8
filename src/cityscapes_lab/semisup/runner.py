"""The steps a generation is made of, as functions of a workspace (the study folder, the data and the settings),
never of the results database: the teachers label the unlabeled images and the students' training set is
composed (``build_set``; the EvalNet approach: ``select_masks``), and the EvalNets' rows are built
(``evalnet_rows``). The tasks of ``semisup.tasks`` run them anywhere; ``semisup.plan`` orders them."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import atomic
from ..config import Config
from ..data.arrays import load_arrays, load_extra, save_named
from ..data.prepared import PreparedData, SplitArrays
from ..engine.inference import predict
from ..engine.runtime import Runtime
from ..labels import IGNORE_INDEX, PAPER_IM_INDEX
from ..study.approaches import StudySplits, study_splits
from ..study.keys import GroupKey, StudyLayout, derive_seed
from . import evalnet as evalnets
from .pseudo import LabelingRule, SetParts, compose_set, label_batch, load_model, mask_sizes, write_pseudo_pairs
from .recipes import Recipe
from .rules import copies_for_score, generation_params


@dataclass
class Workspace:
    """What the steps read: the study folder's layout, the prepared data and the settings."""

    layout: StudyLayout
    data: PreparedData
    config: Config

    @property
    def splits(self) -> StudySplits:
        return study_splits(self.data, self.config.study.labeled_subset)


def im_fill(im_label: str, protocol: str) -> int | None:
    """The label of the pixels where IM teachers disagree (``semisup.im_label``): the IM class 0, the ignore
    label 255, or None for the first teacher's class; ``auto`` is the protocol's (paper: 0, standard: 255)."""
    if im_label == "auto":
        im_label = "im_class" if protocol == "paper" else "ignore"
    return {"im_class": PAPER_IM_INDEX, "ignore": IGNORE_INDEX, "teacher": None}[im_label]


def n_values(recipe: Recipe, config) -> tuple[int, ...]:
    """The approach's n values, restricted to ``semisup.n`` when given (the smallest one when none is left)."""
    wanted = config.semisup.n
    if not wanted or len(recipe.n_values) == 1:
        return recipe.n_values
    return tuple(n for n in recipe.n_values if n in wanted) or (min(recipe.n_values),)


def _rule(recipe: Recipe, n: int, ctx: Workspace) -> LabelingRule:
    s = ctx.config.semisup
    if recipe.rule == "input_ensemble":
        return LabelingRule("input_ensemble", copies=n + 1, cumulative=s.ie_cumulative)
    return LabelingRule(recipe.rule, erode=s.im_erode, dilate=s.im_dilate, block_input=s.block_input,
                        block_output=s.block_output, fill=im_fill(s.im_label, ctx.data.protocol))


def _teacher_count(recipe: Recipe, n: int) -> int:
    return n if recipe.rule in ("ensemble", "im") else 1


def _source_group(recipe: Recipe, group: GroupKey) -> GroupKey:
    if group.generation == 0:
        return GroupKey(recipe.base, group.run)
    return GroupKey(group.approach, group.run, group.n, group.generation - 1)


def _labeled(ctx: Workspace, recipe: Recipe) -> SplitArrays:
    if recipe.labeled == "aldt":
        return load_arrays(ctx.layout.dataset("aldt"))
    return ctx.data.split(ctx.splits.train_labeled)


IM_SCORERS = 2  # IM++ / AIM++: the top-2 EvalNet-IM score each IM pair (the study's choice)


def im_report_splits(protocol: str) -> tuple[str, ...]:
    """The splits on which an IM set's teachers also report their mask size: the standard protocol's test split
    is large and unlabeled, so val alone says how much they disagree there."""
    return ("val", "test") if protocol == "paper" else ("val",)


def _im_sizes(ctx: Workspace, models, rule: LabelingRule, split_name: str, seed: int) -> dict[str, float]:
    """Mean inconsistency-mask size of the teachers on a split (for the report)."""
    split = ctx.data.split(split_name)
    runtime = Runtime.from_config(ctx.config.train)
    sizes = []
    for start in range(0, len(split), ctx.config.semisup.label_batch_size):
        rows = slice(start, start + ctx.config.semisup.label_batch_size)
        _, _, masks = label_batch(models, np.asarray(split.images[rows]), split.ids[rows], rule, runtime, seed,
                                  with_images=False)
        sizes.extend(mask_sizes(masks))
    pixels = split.images.shape[1] * split.images.shape[2]
    return {"mean_im_pixels": float(np.mean(sizes)), "mean_im_share": float(np.mean(sizes)) / pixels}


def build_set(ctx: Workspace, recipe: Recipe, group: GroupKey, teachers: list[Path], nets: list[Path]) -> Path:
    """The students' training set of a generation (pseudo pairs, copies, labeled data), built once; ``teachers``
    are the source group's top checkpoints, ``nets`` the ranked EvalNets (IM++, AIM++)."""
    folder = ctx.layout.dataset(str(group))
    final = folder / "set"
    if (final / "ids.json").exists():
        return final
    runtime = Runtime.from_config(ctx.config.train)
    seed = derive_seed(ctx.config.study.seed, str(group), "pseudo")
    teachers = [load_model(p, runtime) for p in teachers]
    rule = _rule(recipe, group.n, ctx)
    unlabeled = ctx.data.split(ctx.splits.train_unlabeled)
    pairs = write_pseudo_pairs(folder / "pairs", teachers, unlabeled, rule, runtime, seed,
                               ctx.config.semisup.label_batch_size)
    stats: dict[str, dict[str, float]] = {}
    if rule.kind == "im":
        masks = load_extra(folder / "pairs", "masks")
        pixels = pairs.images.shape[1] * pairs.images.shape[2]
        sizes = mask_sizes(masks)
        stats["train_unlabeled"] = {"mean_im_pixels": float(sizes.mean()), "mean_im_share": float(sizes.mean()) / pixels}
        for split in im_report_splits(ctx.data.protocol):
            if split in ctx.data.splits:
                stats[split] = _im_sizes(ctx, teachers, rule, split, seed)
    copies = None
    if recipe.augmented == "one":
        copies = np.ones(len(pairs), dtype=np.int64)
    elif recipe.augmented == "evalnet":
        scorers = [evalnets.load_evalnet(p, runtime) for p in nets[:IM_SCORERS]]
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


def evalnet_rows(ctx: Workspace, approach: str, recipe: Recipe, run: int, members: dict[str, list[Path]]
                 ) -> tuple[Path, Path]:
    """The EvalNets' training and validation rows of a run, built once (notes 5.8, 5.10), from the finished
    models of the baselines (``members``: baseline -> checkpoints)."""
    folder = ctx.layout.dataset(f"{GroupKey(approach, run, role='evalnets')}")
    train_folder, val_folder = folder / "train", folder / "val"
    if (train_folder / "ids.json").exists() and (val_folder / "ids.json").exists():
        return train_folder, val_folder
    runtime = Runtime.from_config(ctx.config.train)
    s = ctx.config.semisup
    labeled, val = ctx.data.split(ctx.splits.train_labeled), ctx.data.split("val")
    seed = derive_seed(ctx.config.study.seed, approach, run, "evalnet-data")
    if recipe.evalnet == "miou":
        ldt, aldt = members["ldt"], members["aldt"]
        train_rows = evalnets.candidate_rows(ldt + aldt, labeled, ctx.data.num_classes, runtime)
        val_models = ldt[:s.evalnet_val_models] + aldt[:s.evalnet_val_models]
        val_rows = evalnets.candidate_rows(val_models, val, ctx.data.num_classes, runtime)
    else:
        models = members["ldt" if recipe.evalnet == "im" else "aldt"]
        train_rows = evalnets.im_rows(models, labeled, s.evalnet_train_loops, ctx.data.num_classes, seed, runtime)
        val_rows = evalnets.im_rows(models, val, s.evalnet_val_loops, ctx.data.num_classes, seed + 1, runtime)
    evalnets.save_rows(train_folder, train_rows)
    evalnets.save_rows(val_folder, val_rows)
    return train_folder, val_folder


def select_masks(ctx: Workspace, group: GroupKey, nets: list[Path], candidates: list[Path]) -> Path:
    """The EvalNet approach's selection (notes 5.8): score every candidate mask of every unlabeled image with the
    top-n EvalNets; keep an image's best candidate when it scores at least ``semisup.threshold_high``, replacing
    its earlier mask. Candidates: generation 0, the predictions of every LDT model; later, those of the previous
    generation's students and the mask selected before (``candidates``: the source group's finished models). The
    selected set only grows. Returns the training set."""
    folder = ctx.layout.dataset(str(group))
    final = folder / "set"
    config = ctx.config
    if not (final / "ids.json").exists():
        runtime = Runtime.from_config(config.train)
        scorers = [evalnets.load_evalnet(p, runtime) for p in nets[:group.n]]
        unlabeled = ctx.data.split(ctx.splits.train_unlabeled)
        source = (GroupKey("ldt", group.run) if group.generation == 0
                  else GroupKey(group.approach, group.run, group.n, group.generation - 1))
        best_score = np.full(len(unlabeled), -np.inf)
        best_mask = np.zeros(unlabeled.images.shape[:3], dtype=np.uint8)
        for path in candidates:
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
        saved_masks = load_extra(folder / "selection", "masks")
        # rows of the unlabeled images and of the saved masks: the students' set links to them, copies nothing
        picked = SplitArrays("selected", [unlabeled.ids[i] for i in rows], unlabeled.images.subset(rows)
                             if hasattr(unlabeled.images, "subset") else unlabeled.images[rows],
                             saved_masks.subset(rows))
        atomic.write_json(folder / "stats.json", {"train_unlabeled": {
            "selected_images": float(selected.sum()), "mean_selected_score": float(best_score[selected].mean())
            if selected.any() else 0.0}})
        compose_set(final, picked, SetParts(True, None, generation_params(0).augment,
                                           ctx.data.split(ctx.splits.train_labeled)), 0)
    return final


def drop_sets(folder: Path, names: tuple[str, ...]) -> None:
    """Delete the named sets of a finished group (``study.keep_datasets = false``: a generation's ``set`` and
    ``pairs``, the EvalNets' ``train`` and ``val`` rows), with any half-written copy of them, in that order (a set
    first: it links to the pairs); ``stats.json`` (the report's) and the EvalNet selection (the next generation's
    input) stay."""
    for name in names:
        for path in (folder / name, atomic.partial_path(folder / name)):
            shutil.rmtree(path, ignore_errors=True)


def selection_steps(data: PreparedData, batch: int, set_size: int) -> int:
    """Steps per epoch of the EvalNet approach's students: max(train_full // batch // 3, set // batch), as the
    study."""
    return max(len(data.splits["train_full"]) // batch // 3, set_size // batch, 1)
