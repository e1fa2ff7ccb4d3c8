"""Running a study: list the groups, train every member that is not finished, rank each group and keep its top-K.

Resumable by construction: the database says which trainings are finished; an unfinished one continues from
its last epoch checkpoint; a finished one is never redone; ranking is recomputed from the database. A training
whose loss diverges is recorded as failed and the study goes on.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from .. import atomic
from ..config import Config, format_config
from ..data.prepared import PreparedData, load_prepared
from ..errors import ConfigError
from .approaches import BASELINES, ensure_aldt_set
from .keys import GroupKey, StudyLayout, TrainingKey, derive_seed
from .store import ResultStore
from .tasks import TrainingTask, execute

RANK_SPLIT, RANK_METRIC = "val", "paper_miou"  # the study ranks a group by its benchmark val mIoU


@dataclass(frozen=True)
class GroupPlan:
    group: GroupKey
    tasks: list[tuple[TrainingKey, TrainingTask]]


@dataclass(frozen=True)
class StudySummary:
    trained: int  # trainings run (or resumed) by this call
    skipped: int  # already finished before
    failed: int  # failed in this call
    groups: int


def check_approaches(approaches: list[str]) -> None:
    unknown = [a for a in approaches if a not in BASELINES]
    if unknown or not approaches:
        raise ConfigError(f"unknown approach {', '.join(unknown) or '(none given)'}; choose from: "
                          f"{', '.join(BASELINES)}")


def _task(layout: StudyLayout, data: PreparedData, config: Config, key: TrainingKey, train_set: str,
          show_progress: bool) -> TrainingTask:
    study = config.study
    return TrainingTask(
        key=str(key), seed=derive_seed(study.seed, key.group.approach, key.group.run, key.group.n,
                                       key.group.generation, key.member),
        train=asdict(config.train), data=str(data.root), train_set=train_set, out_dir=str(layout.training(key)),
        eval_splits=tuple(study.eval_splits), full_resolution=study.full_resolution,
        predictions_dir=str(layout.predictions(key, "")) if study.save_predictions else None,
        show_progress=show_progress)


def plan_baselines(layout: StudyLayout, data: PreparedData, config: Config, approaches: list[str],
                   show_progress: bool) -> list[GroupPlan]:
    """One group per baseline approach and run, ``study.models`` members each."""
    plans = []
    for approach in approaches:
        train_set = BASELINES[approach].train_set
        if train_set == "aldt":
            train_set = str(layout.dataset("aldt"))
        for run in range(1, config.study.runs + 1):
            group = GroupKey(approach, run)
            keys = [TrainingKey(group, member) for member in range(config.study.models)]
            plans.append(GroupPlan(group, [(k, _task(layout, data, config, k, train_set, show_progress))
                                           for k in keys]))
    return plans


def rank_group(store: ResultStore, layout: StudyLayout, plan: GroupPlan, top_k: int) -> list[TrainingKey]:
    """Order the finished members by val mIoU (ties: lower member first), record the ranking and keep the
    top-K checkpoints as ``top1.pt`` .. ``topK.pt``."""
    scored = []
    for key, _ in plan.tasks:
        if store.status(key) == "done":
            scored.append((key, store.scores(key).get(RANK_SPLIT, {}).get(RANK_METRIC, float("-inf"))))
    scored.sort(key=lambda item: (-item[1], item[0].member))
    store.set_ranking(plan.group, scored)
    for rank, (key, _) in enumerate(scored[:top_k], 1):
        target = layout.top(plan.group, rank)
        tmp = target.with_name(target.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(layout.training(key) / "best.pt", tmp)
        except OSError:
            shutil.copyfile(layout.training(key) / "best.pt", tmp)
        tmp.replace(target)
    return [key for key, _ in scored]


def open_study(out: Path, data: PreparedData, config: Config) -> tuple[StudyLayout, ResultStore]:
    """Create or reopen a study folder; refuse one that was started with other settings or other data."""
    layout = StudyLayout(Path(out))
    atomic.check_writable_parent(layout.database)
    layout.root.mkdir(parents=True, exist_ok=True)
    store = ResultStore(layout.database)
    previous = store.get_meta("config_digest")
    if previous is not None and previous != config.digest():
        store.close()
        raise ConfigError(f"{out}: this study was started with other settings (digest {previous}, now "
                          f"{config.digest()}, see {layout.root / 'config.toml'}); pass the same settings to "
                          "continue it, or choose a new --out")
    previous_data = store.get_meta("data")
    if previous_data is not None and previous_data != str(data.root.resolve()):
        store.close()
        raise ConfigError(f"{out}: this study uses the data in {previous_data}; pass --data {previous_data} or "
                          "choose a new --out")
    store.set_meta("config_digest", config.digest())
    store.set_meta("config", config.to_dict())
    store.set_meta("data", str(data.root.resolve()))
    store.set_meta("protocol", data.protocol)
    store.set_meta("stand_in", data.stand_in)
    atomic.write_text(layout.root / "config.toml", format_config(config))
    return layout, store


def run_study(data_dir: Path, out: Path, approaches: list[str], config: Config, *, show_progress: bool = True,
              log: Callable[[str], None] = lambda message: None) -> StudySummary:
    """Run (or continue) the study in ``out`` for the given approaches."""
    check_approaches(approaches)
    data = load_prepared(data_dir)
    if data.protocol != "paper":
        raise ConfigError(f"{data_dir}: the study follows the paper protocol, this folder is {data.protocol}; "
                          "prepare the data with --protocol paper")
    layout, store = open_study(out, data, config)
    with store:
        if "aldt" in approaches:
            ensure_aldt_set(data, layout.dataset("aldt"), config.aldt, config.study.seed)
        plans = plan_baselines(layout, data, config, approaches, show_progress)
        total = sum(len(plan.tasks) for plan in plans)
        trained = skipped = failed = 0
        bar = tqdm(total=total, desc="study", unit="model", disable=None if show_progress else True,
                   dynamic_ncols=True)
        with bar:
            for plan in plans:
                for key, task in plan.tasks:
                    if store.status(key) in ("done", "failed"):
                        skipped += 1
                        bar.update()
                        continue
                    store.start(key, task.seed, config.digest())
                    result = execute(task)
                    store.finish(key, status=result.status, seconds=result.seconds, epochs=result.epochs,
                                 best_epoch=result.best_epoch, checkpoint=result.checkpoint, error=result.error,
                                 scores=result.scores)
                    trained += 1
                    if result.status == "failed":
                        failed += 1
                        log(f"{key}: failed: {result.error}")
                    bar.update()
                rank_group(store, layout, plan, config.study.top_k)
    return StudySummary(trained, skipped, failed, len(plans))
