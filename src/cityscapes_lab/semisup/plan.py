"""The whole study as one plan: every training, pseudo-labelling, EvalNet and ranking step with what it waits for.
``plan_study`` is the only place that knows the study's shape; the progress bar, ``study --plan`` and the
executors all read the plan it makes. A generation waits for the ranking of its source group (and of its
EvalNets); nothing else is ordered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..config import Config
from ..data.prepared import PreparedData
from ..engine.kinds import validation_rule
from ..engine.prediction import rule_protocol
from ..study.approaches import BASELINES, study_splits
from ..study.graph import Node, Plan
from ..study.groups import StudyContext, make_task, rank_group, record, top_checkpoints, training_seed
from ..study.keys import GroupKey, StudyLayout, TrainingKey, derive_seed
from ..study.tasks import AldtSetTask
from .consistency import STRENGTHS
from .recipes import RECIPES, Recipe
from .runner import (IM_SCORERS, _source_group, _teacher_count, drop_sets, im_report_splits, n_values,
                     selection_steps)
from .tasks import EvalNetTask, RowsTask, SetTask


def _done(ctx: StudyContext, key: TrainingKey) -> bool:
    return ctx.store.status(key) in ("done", "failed")


def _members(ctx: StudyContext, group: GroupKey) -> list[str]:
    """The finished models of a group (their checkpoints), in member order."""
    return [row.checkpoint for row in ctx.store.trainings(group.approach, group.role)
            if row.run == group.run and row.n == group.n and row.generation == group.generation
            and row.status == "done"]


def _stats(ctx: StudyContext, group: GroupKey) -> None:
    path = ctx.layout.dataset(str(group)) / "stats.json"
    if path.exists():
        import json

        ctx.store.set_group_stats(group, json.loads(path.read_text()))


class _Builder:
    """Adds the nodes of one study to a plan, in the order a serial run takes them."""

    def __init__(self, config: Config, data: PreparedData, layout: StudyLayout):
        self.plan, self.config, self.data, self.layout = Plan(), config, data, layout
        self.batch = config.train.batch_size
        self.splits = study_splits(data, config.study.labeled_subset)
        self.sizes = {name: len(ids) for name, ids in data.splits.items()}
        for role in ("train_labeled", "train_unlabeled", "train_full"):
            self.sizes[role] = self.sizes.get(self.splits.resolve(role), 0)
        self.sizes["aldt"] = self.sizes.get("train_labeled", 0) * (1 + config.aldt.copies)
        width, height = data.size
        self.pixels = width * height
        self._checkpoints: dict[float | str | None, int] = {}
        # what a training predicts: val after each validated epoch (under train.val_rule), then its eval splits
        # (under study.eval_rule); whole images of the prepared size on the paper protocol
        study, model = config.study, config.train.model

        def per_image(rule) -> int:
            return rule.pixels(height, width) if rule else self.pixels

        self.val_pixels = self.sizes.get("val", 0) * per_image(
            validation_rule(config.train, model, study.eval_rule, study.eval_window))
        scored = [name for name in study.eval_splits
                  if name in data.splits and (data.has_labels(name) or study.save_predictions)]
        self.scored_pixels = sum(self.sizes[name] for name in scored) * per_image(
            rule_protocol(model, study.eval_rule, study.eval_window))

    def rank(self, group: GroupKey, keys: list[TrainingKey], after: list[str],
             then: Callable[[StudyContext], None] | None = None, **how) -> str:
        def make(ctx: StudyContext) -> None:
            rank_group(ctx, group, keys, **how)
            _stats(ctx, group)
            if then is not None:
                then(ctx)

        return self.plan.add(Node(f"rank {group}", "rank", group, tuple(after), make=make)).id

    def trainings(self, group: GroupKey, count: int, after: tuple[str, ...], make_for, images: int,
                  kind: str = "train", seed_of=None, alpha: float | None = None, validations: int = 0,
                  predicted: int | None = None) -> list[Node]:
        """``count`` trainings of a group; each predicts its validations and its scoring of the eval splits,
        unless ``predicted`` says otherwise (an EvalNet validates on its own rows and scores nothing)."""
        nodes = []
        disk = self.checkpoint_bytes("evalnet" if kind == "evalnet" else alpha)
        if predicted is None:
            predicted = validations * self.val_pixels + self.scored_pixels
        for member in range(count):
            key = TrainingKey(group, member)
            seed = (seed_of or (lambda key: training_seed(self.config, key)))(key)
            nodes.append(self.plan.add(Node(
                f"{kind} {key}", kind, group, after, key=key, images=images, predicted=predicted, seed=seed, disk=disk,
                make=lambda ctx, key=key: make_for(ctx, key), finished=lambda ctx, key=key: _done(ctx, key),
                record=lambda ctx, result, key=key: record(ctx, key, result))))
        return nodes

    def segmentation_images(self, set_size: int, steps: int = 0, epochs: int = 0) -> int:
        return (epochs or self.config.train.epochs) * (steps or max(1, set_size // self.batch)) * self.batch

    def validations(self, epochs: int = 0) -> int:
        """How many epochs of a training end with a validation: every train.val_every-th and the last."""
        epochs, every = epochs or self.config.train.epochs, self.config.train.val_every
        return epochs // every + (epochs % every > 0)

    # --- baselines -------------------------------------------------------------------------------------------
    def baseline(self, approach: str) -> None:
        train_set = BASELINES[approach].train_set
        after: tuple[str, ...] = ()
        if train_set == "aldt":
            folder = self.layout.dataset("aldt")
            task = AldtSetTask(str(self.data.root), str(folder), asdict(self.config.aldt), self.config.study.seed)
            after = (self.plan.add(Node("aldt set", "aldt", GroupKey("aldt", 0), make=lambda ctx: task,
                                        finished=lambda ctx: (folder / "ids.json").exists(),
                                        disk=self.sizes["aldt"] * self.pixels * 4)).id,)
            train_set = str(folder)
        size = self.sizes[BASELINES[approach].train_set]
        train_set = self.splits.resolve(train_set)
        for run in range(1, self.config.study.runs + 1):
            group = GroupKey(approach, run)
            nodes = self.trainings(group, self.config.study.models, after,
                                   lambda ctx, key: make_task(ctx, key, train_set), self.segmentation_images(size),
                                   validations=self.validations())
            self.rank(group, [n.key for n in nodes], [n.id for n in nodes])

    # --- the semi-supervised approaches ---------------------------------------------------------------------
    def approach(self, approach: str) -> None:
        recipe = RECIPES[approach]
        for run in range(1, self.config.study.runs + 1):
            nets_rank = self.evalnets(approach, recipe, run) if recipe.evalnet else None
            for n in n_values(recipe, self.config):
                if recipe.rule == "consistency":
                    self.consistency(GroupKey(approach, run, n, 0))
                    continue
                for generation in range(self.config.semisup.generations):
                    self.generation(recipe, GroupKey(approach, run, n, generation), nets_rank)

    def evalnets(self, approach: str, recipe: Recipe, run: int) -> str:
        group = GroupKey(approach, run, role="evalnets")
        bases = {"miou": ("ldt", "aldt"), "im": ("ldt",), "aug_im": ("aldt",)}[recipe.evalnet]
        folder = self.layout.dataset(str(group))
        config = self.config
        keys = [TrainingKey(group, m) for m in range(config.semisup.evalnets)]

        def make_rows(ctx: StudyContext) -> RowsTask:
            members = {b: _members(ctx, GroupKey(b, run)) for b in ("ldt", "aldt")}
            return RowsTask(str(ctx.layout.root), str(ctx.data.root), config.to_dict(), approach, run, members,
                            ctx.threads)

        rows_disk = self._rows_disk(recipe)  # all of it deletable once the EvalNets are trained
        train_rows, val_rows, predictions = self._rows_counts(recipe)
        rows = self.plan.add(Node(f"rows {group}", "rows", group, tuple(f"rank {GroupKey(b, run)}" for b in bases),
                                  make=make_rows, finished=lambda ctx: (folder / "val" / "ids.json").exists()
                                  or all(_done(ctx, k) for k in keys), disk=rows_disk, transient=rows_disk,
                                  predicted=predictions * self.pixels))

        def seed_of(key: TrainingKey) -> int:
            return derive_seed(config.study.seed, str(key))

        def make_net(ctx: StudyContext, key: TrainingKey) -> EvalNetTask:
            out = ctx.layout.training(key)
            return EvalNetTask(str(key), seed_of(key), config.to_dict(),
                               str(folder / "train"), str(folder / "val"), str(out), ctx.data.num_classes,
                               ctx.show_progress, ctx.threads)

        epochs = config.semisup.evalnet_epochs
        images = epochs * max(1, train_rows // self.batch) * self.batch
        # an EvalNet's passes are counted as pixels of its inputs, like a segmentation network's
        nodes = self.trainings(group, config.semisup.evalnets, (rows.id,), make_net, images, kind="evalnet",
                               seed_of=seed_of, predicted=self.validations(epochs) * val_rows * self.pixels)
        drop = None if config.study.keep_datasets else lambda ctx: drop_sets(folder, ("train", "val"))
        return self.rank(group, keys, [n.id for n in nodes], split="val", metric="total_loss",
                         higher_is_better=False, then=drop)

    def consistency(self, group: GroupKey) -> None:
        config = self.config
        ldt = GroupKey("ldt", group.run)

        def make(ctx: StudyContext, key: TrainingKey):
            start = top_checkpoints(ctx, ldt, 1)[0]
            return make_task(ctx, key, self.splits.train_labeled, init_checkpoint=str(start),
                             consistency_views=STRENGTHS[group.n], consistency_epochs=config.semisup.cl_epochs)

        labeled, unlabeled = self.sizes.get("train_labeled", 0), self.sizes.get("train_unlabeled", 0)
        images = config.semisup.cl_epochs * (labeled + 2 * unlabeled)
        nodes = self.trainings(group, config.semisup.students, (f"rank {ldt}",), make, images, kind="consistency",
                               validations=2 * config.semisup.cl_epochs)
        self.rank(group, [n.key for n in nodes], [n.id for n in nodes])

    def generation(self, recipe: Recipe, group: GroupKey, nets_rank: str | None) -> None:
        config, approach = self.config, group.approach
        source = (GroupKey("ldt", group.run) if recipe.rule == "evalnet_selection" and group.generation == 0
                  else _source_group(recipe, group))
        evalnet_group = GroupKey(approach, group.run, role="evalnets")
        folder = self.layout.dataset(str(group))
        keys = [TrainingKey(group, m) for m in range(config.semisup.students)]

        def make_set(ctx: StudyContext) -> SetTask:
            nets = [str(p) for p in _ranked(ctx, evalnet_group)] if recipe.evalnet else []
            teachers, candidates = [], []
            if recipe.rule == "evalnet_selection":
                nets, candidates = nets[:group.n], _members(ctx, source)
            else:
                teachers = [str(p) for p in top_checkpoints(ctx, source, _teacher_count(recipe, group.n))]
            return SetTask(str(ctx.layout.root), str(ctx.data.root), config.to_dict(), approach,
                           (group.approach, group.run, group.n, group.generation), tuple(teachers), tuple(nets),
                           tuple(candidates), ctx.threads)

        after = (f"rank {source}",) + ((nets_rank,) if nets_rank else ())
        disk, transient = self._set_disk(recipe)
        built = self.plan.add(Node(f"set {group}", "set", group, after, make=make_set,
                                   finished=lambda ctx: (folder / "set" / "ids.json").exists()
                                   or all(_done(ctx, k) for k in keys), disk=disk, transient=transient,
                                   predicted=self._set_predicted(recipe, group)))
        alpha = self._alpha(recipe, group)

        def make_student(ctx: StudyContext, key: TrainingKey):
            steps = 0
            if recipe.rule == "evalnet_selection":
                from ..data.arrays import load_arrays

                steps = selection_steps(ctx.data, config.train.batch_size, len(load_arrays(folder / "set")))
            epochs = config.semisup.student_epochs or config.train.epochs
            return make_task(ctx, key, str(folder / "set"), train_alpha=alpha, train_steps_per_epoch=steps,
                             train_epochs=epochs)

        nodes = self.trainings(group, config.semisup.students, (built.id,), make_student,
                               self.segmentation_images(self._set_estimate(recipe),
                                                        epochs=config.semisup.student_epochs), alpha=alpha,
                               validations=self.validations(config.semisup.student_epochs))
        # once the students are done nothing reads their set again (a rerun skips the finished set)
        drop = None if config.study.keep_datasets else lambda ctx: drop_sets(folder, ("set", "pairs"))
        self.rank(group, keys, [n.id for n in nodes], then=drop)

    def _set_predicted(self, recipe: Recipe, group: GroupKey) -> int:
        """Pixels the networks predict to build a generation's set. Over each unlabeled image: one pass per teacher
        or per input copy (IE: n + 1); EvalNet selection: one per candidate model, whose mask each of the top-n
        EvalNets then scores; IM++ / AIM++: the top EvalNet-IM score each IM pair. IM teachers also predict the
        splits their mask size is reported on."""
        unlabeled, teachers = self.sizes.get("train_unlabeled", 0), _teacher_count(recipe, group.n)
        if recipe.rule == "input_ensemble":
            passes = group.n + 1
        elif recipe.rule == "evalnet_selection":
            candidates = self.config.study.models if group.generation == 0 else self.config.semisup.students
            passes = candidates * (1 + group.n)
        else:
            passes = teachers
        if recipe.augmented == "evalnet":
            passes += min(IM_SCORERS, self.config.semisup.evalnets)
        reported = 0
        if recipe.rule == "im":
            reported = teachers * sum(self.sizes.get(name, 0) for name in im_report_splits(self.data.protocol))
        return (passes * unlabeled + reported) * self.pixels

    def _alpha(self, recipe: Recipe, group: GroupKey) -> float:
        from .rules import generation_params

        return generation_params(group.generation).alpha if recipe.widen else self.config.train.alpha

    def _set_estimate(self, recipe: Recipe) -> int:
        """The size of a generation's training set before it exists: the labeled data plus the pseudo pairs
        (clean and/or augmented copies; IM++: 3 copies, the middle of 1-5)."""
        unlabeled = self.sizes.get("train_unlabeled", 0)
        copies = {"": 0, "one": 1, "evalnet": 3}[recipe.augmented] + (1 if recipe.clean else 0)
        labeled = self.sizes["aldt"] if recipe.labeled == "aldt" else self.sizes.get("train_labeled", 0)
        return labeled + unlabeled * max(1, copies)

    # --- disk (estimates for study --plan) ------------------------------------------------------------------
    def checkpoint_bytes(self, alpha: float | str | None = None) -> int:
        """Bytes of one kept checkpoint (its fp32 weights): the training network at width ``alpha`` (None: the
        configured one), or ``"evalnet"``; built on the meta device, so nothing is allocated."""
        if alpha not in self._checkpoints:
            import torch

            from ..models.evalnet import EvalNet
            from ..models.registry import architecture_options, training_model

            train = self.config.train
            train = replace(train, model_options=architecture_options(train.model_options),
                            alpha=train.alpha if alpha in (None, "evalnet") else alpha)
            with torch.device("meta"):
                model = EvalNet(self.data.num_classes) if alpha == "evalnet" else \
                    training_model(train, self.data.num_classes)[0]
            self._checkpoints[alpha] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        return self._checkpoints[alpha]

    def _set_disk(self, recipe: Recipe) -> tuple[int, int]:
        """(bytes, of which transient) of a generation's sets: the pseudo pairs (labels; IM: the masks too; the
        images are links) and the composed set (links to the pairs and the labeled data, unless it has augmented
        copies); the EvalNet approach keeps its selection (the next generation reads it), its set links to it."""
        pixels, unlabeled = self.pixels, self.sizes.get("train_unlabeled", 0)
        if recipe.rule == "evalnet_selection":
            return unlabeled * (pixels + 9), 0  # masks, scores (float64), selected flags; the set: links
        pairs = unlabeled * pixels * (2 if recipe.rule == "im" else 1)  # labels, IM masks; images: links
        composed = self._set_estimate(recipe) * pixels * 4 if recipe.augmented else 0
        return pairs + composed, pairs + composed

    def _rows_counts(self, recipe: Recipe) -> tuple[int, int, int]:
        """(training rows, validation rows, segmentation forward passes) of the EvalNets' rows of a run. EvalNet:
        a row per LDT and ALDT model's prediction of each labeled image and one of its truth; on val those of
        ``semisup.evalnet_val_models`` of each. EvalNet-IM: one IM pair per image and pass, from one prediction
        of each image by every model of its baseline."""
        s, models = self.config.semisup, self.config.study.models
        labeled, val = self.sizes.get("train_labeled", 0), self.sizes.get("val", 0)
        if recipe.evalnet == "miou":
            val_models = min(s.evalnet_val_models, models)
            return ((2 * models + 1) * labeled, (2 * val_models + 1) * val,
                    2 * models * labeled + 2 * val_models * val)
        return s.evalnet_train_loops * labeled, s.evalnet_val_loops * val, models * (labeled + val)

    def _rows_disk(self, recipe: Recipe) -> int:
        """Bytes of the EvalNets' rows of a run: images, and per row a candidate mask and its targets (EvalNet:
        the images once; EvalNet-IM: every row has its own image)."""
        pixels = self.pixels
        labeled, val = self.sizes.get("train_labeled", 0), self.sizes.get("val", 0)
        per_row = pixels + 8 * self.data.num_classes + 8  # mask, IoU and detection targets (float32), index
        train_rows, val_rows, _ = self._rows_counts(recipe)
        if recipe.evalnet == "miou":
            return (labeled + val) * 3 * pixels + (train_rows + val_rows) * per_row
        return (train_rows + val_rows) * (3 * pixels + per_row)


def _ranked(ctx: StudyContext, group: GroupKey) -> list[Path]:
    """The checkpoints of a ranked group's finished models, best first."""
    return [ctx.layout.root / "models" / key / "best.pt" for key, _ in ctx.store.ranking(group)]


def plan_study(baselines: list[str], approaches: list[str], config: Config, data: PreparedData,
               layout: StudyLayout) -> Plan:
    """Every step of the study for the chosen baselines and semi-supervised approaches, in serial order."""
    builder = _Builder(config, data, layout)
    for approach in baselines:
        builder.baseline(approach)
    for approach in approaches:
        builder.approach(approach)
    return builder.plan


@dataclass(frozen=True)
class DiskNeeds:
    """The disk a plan's outputs take (estimates): checkpoints, the sets that stay (the ALDT set, the EvalNet
    selections), and those ``study.keep_datasets = false`` deletes once their group is done (each generation's
    pairs and set, the EvalNets' rows)."""

    checkpoints: int
    kept: int
    deletable: tuple[int, ...]  # the deletable sets of each step, largest first

    @property
    def total(self) -> int:
        return self.checkpoints + self.kept + sum(self.deletable)

    def at_once(self, keep_datasets: bool, slots: int = 1) -> int:
        """At most at once: everything when sets are kept, else the sets of ``slots`` groups in flight."""
        return self.total if keep_datasets else self.checkpoints + self.kept + sum(self.deletable[:slots])


def disk_needs(plan: Plan) -> DiskNeeds:
    sets = [node for node in plan.nodes if not node.training]
    return DiskNeeds(sum(node.disk for node in plan.trainings), sum(node.disk - node.transient for node in sets),
                     tuple(sorted((node.transient for node in sets if node.transient), reverse=True)))
