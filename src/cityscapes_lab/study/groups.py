"""Training a group: run every member that is not finished, record it, rank the group, keep its top-K."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import Config
from ..data.prepared import PreparedData
from .approaches import StudySplits, study_splits
from .keys import GroupKey, StudyLayout, TrainingKey, derive_seed
from .progress import StudyProgress
from .store import ResultStore
from .tasks import TaskResult, TrainingTask

RANK_SPLIT = "val"
#: the study ranks a group by its benchmark val mIoU (the paper protocol's), or by the official val mIoU
RANK_METRICS = {"paper": "paper_miou", "standard": "miou"}


@dataclass
class StudyContext:
    """Everything a study's steps share."""

    layout: StudyLayout
    store: ResultStore
    data: PreparedData
    config: Config
    progress: StudyProgress
    log: Callable[[str], None]
    show_progress: bool = True
    threads: int = 0  # torch threads of each task (the executor's share of a machine's cores; 0: all of them)
    counts: dict[str, int] = field(default_factory=lambda: {"trained": 0, "skipped": 0, "failed": 0})

    @property
    def splits(self) -> StudySplits:
        return study_splits(self.data, self.config.study.labeled_subset)

    def skipped(self, node=None) -> None:
        """A training that was finished before."""
        self.counts["skipped"] += 1
        self.progress.skipped()


def training_seed(config: Config, key: TrainingKey) -> int:
    """The seed of a segmentation training of the study (its init, data order and augmentation)."""
    group = key.group
    return derive_seed(config.study.seed, group.approach, group.run, group.n, group.generation, key.member)


def make_task(ctx: StudyContext, key: TrainingKey, train_set: str, **overrides) -> TrainingTask:
    """A training task of the study for ``key``; ``train_*`` overrides change the training settings (e.g. the
    student width ``train_alpha``), other overrides set task fields (e.g. ``init_checkpoint``)."""
    study = ctx.config.study
    train = asdict(ctx.config.train)
    train.update({name[len("train_"):]: value for name, value in overrides.items() if name.startswith("train_")})
    fields = {name: value for name, value in overrides.items() if not name.startswith("train_")}
    splits = ctx.splits
    return TrainingTask(
        key=str(key), seed=training_seed(ctx.config, key),
        train=train, data=str(ctx.data.root), train_set=train_set, out_dir=str(ctx.layout.training(key)),
        eval_splits=tuple(dict.fromkeys(splits.resolve(name) for name in study.eval_splits)),
        full_resolution=study.full_resolution,
        predictions_dir=str(ctx.layout.predictions(key, "")) if study.save_predictions else None,
        show_progress=ctx.show_progress, threads=ctx.threads, online=asdict(ctx.config.online),
        eval_rule=study.eval_rule, eval_window=study.eval_window,
        labeled=splits.train_labeled, unlabeled=splits.train_unlabeled, **fields)


def record(ctx: StudyContext, key: TrainingKey, result: TaskResult) -> None:
    ctx.store.finish(key, status=result.status, seconds=result.seconds, epochs=result.epochs,
                     best_epoch=result.best_epoch, checkpoint=result.checkpoint, error=result.error,
                     scores=result.scores)
    ctx.counts["trained"] += 1
    ctx.progress.done(str(key), result)
    if result.status == "failed":
        ctx.counts["failed"] += 1
        if not ctx.progress.lines:  # where the progress already prints one line per training, once is enough
            ctx.log(f"{key}: failed: {result.error}")


def keep_top(ctx: StudyContext, group: GroupKey, ranked: list[TrainingKey]) -> None:
    """Hard-link (or copy) the best ``study.top_k`` checkpoints to ``top1.pt`` .. ``topK.pt``, atomically."""
    for rank, key in enumerate(ranked[:ctx.config.study.top_k], 1):
        target = ctx.layout.top(group, rank)
        tmp = target.with_name(target.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(ctx.layout.training(key) / "best.pt", tmp)
        except OSError:
            shutil.copyfile(ctx.layout.training(key) / "best.pt", tmp)
        tmp.replace(target)


def rank_group(ctx: StudyContext, group: GroupKey, keys: list[TrainingKey], split: str = RANK_SPLIT,
               metric: str | None = None, higher_is_better: bool = True) -> list[TrainingKey]:
    """Order the finished members by a score (``metric``: the protocol's val mIoU; ties: lower member first),
    record the ranking, keep the top-K."""
    metric = metric or RANK_METRICS[ctx.data.protocol]
    sign = 1 if higher_is_better else -1
    scored = [(key, ctx.store.scores(key).get(split, {}).get(metric, float("nan")))
              for key in keys if ctx.store.status(key) == "done"]
    scored.sort(key=lambda item: (-sign * item[1] if item[1] == item[1] else float("inf"), item[0].member))
    ctx.store.set_ranking(group, scored)
    ranked = [key for key, _ in scored]
    keep_top(ctx, group, ranked)
    return ranked


def top_checkpoints(ctx: StudyContext, group: GroupKey, count: int) -> list[Path]:
    """The ``count`` best checkpoints of a finished group; LabError when the group has fewer."""
    from ..errors import ConfigError

    paths = [ctx.layout.top(group, rank) for rank in range(1, count + 1)]
    if not all(path.exists() for path in paths):
        raise ConfigError(f"{group} has fewer than {count} finished models to teach with; raise study.models and "
                          f"study.top_k to at least {count}, or lower semisup.n")
    return paths
