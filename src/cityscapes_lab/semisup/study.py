"""Running the whole study: the baselines first (``study``), then every semi-supervised approach generation by
generation (``semisup.runner``).

Resumable by construction: the database says which trainings are finished; an unfinished one continues from its
last epoch checkpoint; a finished one is never redone; derived training sets are written atomically and reused;
rankings are recomputed from the database. A training whose loss diverges is recorded as failed and the study
goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..config import Config, format_config
from ..data.prepared import PreparedData, load_prepared
from ..engine.runtime import Runtime, cpu_threads, load_note
from ..errors import ConfigError
from ..outputs import check_output_folder
from ..study.approaches import BASELINES, ensure_aldt_set
from ..study.groups import StudyContext, make_task, train_group
from ..study.keys import GroupKey, StudyLayout, TrainingKey
from ..study.progress import StudyProgress
from ..study.store import ResultStore
from .recipes import RECIPES, required_baselines
from .runner import n_values, planned_trainings, run_approach


@dataclass(frozen=True)
class StudySummary:
    trained: int  # trainings run (or resumed) by this call
    skipped: int  # already finished before
    failed: int  # failed in this call
    groups: int


def resolve_approaches(approaches: list[str]) -> tuple[list[str], list[str]]:
    """(baselines, semi-supervised approaches) to run, in order; baselines that an approach needs are added."""
    known = list(BASELINES) + list(RECIPES)
    unknown = [a for a in approaches if a not in known]
    if unknown or not approaches:
        raise ConfigError(f"unknown approach {', '.join(unknown) or '(none given)'}; choose from: {', '.join(known)}")
    semisup = [a for a in approaches if a in RECIPES]
    needed = set(approaches) | {b for a in semisup for b in required_baselines(a)}
    return [b for b in BASELINES if b in needed], semisup


def is_study(folder: Path) -> bool:
    """Whether ``folder`` is a study folder (it has the results database)."""
    return StudyLayout(Path(folder)).database.exists()


def check_settings(data: PreparedData, config: Config, semisup: list[str]) -> None:
    """Every setting that can only be checked against the data or this machine, checked before anything is
    written: a typo must not leave a study folder that then refuses the corrected command."""
    from ..engine.kinds import cross_entropy_step
    from ..models.registry import training_model

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("the study runs as one process, not under torchrun: start `cityscapes-lab study` directly "
                          "(torchrun is for `cityscapes-lab train`)")
    Runtime.from_config(config.train)  # a device or precision this machine lacks
    model, _ = training_model(config.train, data.num_classes)  # unknown model or option
    cross_entropy_step(model, config.train, data.ignore_index)  # an aux_weight the network cannot use
    unknown = [name for name in config.study.eval_splits if name not in data.splits]
    if unknown:
        raise ConfigError(f"study.eval_splits: {data.root} has no split {', '.join(map(repr, unknown))}; it has: "
                          f"{', '.join(data.splits)}")
    study, students = config.study, config.semisup.students
    for approach in semisup:
        recipe = RECIPES[approach]
        teachers = max(n_values(recipe, config)) if recipe.rule in ("ensemble", "im") else 1
        kept = min(study.models, study.top_k)
        if recipe.generations and config.semisup.generations > 1:
            kept = min(kept, students)
        if teachers > kept:
            raise ConfigError(f"{approach} teaches with {teachers} models, but its groups keep only {kept} (study.models "
                              f"{study.models}, study.top_k {study.top_k}, semisup.students {students}); raise them to "
                              f"at least {teachers}, or lower semisup.n")


def open_study(out: Path, data: PreparedData, config: Config) -> tuple[StudyLayout, ResultStore]:
    """Create or reopen a study folder; refuse one that was started with other settings or other data."""
    check_output_folder(out, what="a study", ours=is_study, inputs=[data.root])
    layout = StudyLayout(Path(out))
    layout.root.mkdir(parents=True, exist_ok=True)
    store = ResultStore(layout.database)
    previous = store.get_meta("config")
    changed = config.differences(previous) if previous is not None else []
    if changed:
        store.close()
        raise ConfigError(f"{out}: this study was started with other settings ({'; '.join(changed)}; see "
                          f"{layout.root / 'config.toml'}); pass the same settings to continue it, or choose a new "
                          "--out")
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


def run_baseline(ctx: StudyContext, approach: str) -> int:
    """Every run's group of a baseline; returns the number of groups."""
    train_set = BASELINES[approach].train_set
    if train_set == "aldt":
        train_set = str(ensure_aldt_set(ctx.data, ctx.layout.dataset("aldt"), ctx.config.aldt, ctx.config.study.seed))
    for run in range(1, ctx.config.study.runs + 1):
        group = GroupKey(approach, run)
        keys = [TrainingKey(group, member) for member in range(ctx.config.study.models)]
        train_group(ctx, group, [(key, make_task(ctx, key, train_set)) for key in keys])
    return ctx.config.study.runs


def run_study(data_dir: Path, out: Path, approaches: list[str], config: Config, *, show_progress: bool = True,
              log: Callable[[str], None] = lambda message: None) -> StudySummary:
    """Run (or continue) the study in ``out`` for the given approaches."""
    baselines, semisup = resolve_approaches(approaches)
    data = load_prepared(data_dir)
    if data.protocol != "paper":
        raise ConfigError(f"{data_dir}: the study follows the paper protocol, this folder is {data.protocol}; "
                          "prepare the data with --protocol paper")
    data.verify()
    check_settings(data, config, semisup)
    added = [b for b in baselines if b not in approaches]
    if added:
        log(f"adding {', '.join(a.upper() for a in added)}: the semi-supervised approaches start from them")
    layout, store = open_study(out, data, config)
    note = load_note(cpu_threads(config.train.threads))
    if note and Runtime.from_config(config.train).device.type == "cpu":
        log(f"note: {note}")
    total = len(baselines) * config.study.runs * config.study.models + sum(
        planned_trainings(approach, config) for approach in semisup)
    progress = StudyProgress(total, layout.log, show_progress)
    with store:
        try:
            progress.start(sum(row.status in ("done", "failed") for row in store.trainings()))
            ctx = StudyContext(layout, store, data, config, progress, log, show_progress)
            groups = sum(run_baseline(ctx, approach) for approach in baselines)
            groups += sum(run_approach(ctx, approach) for approach in semisup)
        finally:
            progress.close()
    return StudySummary(ctx.counts["trained"], ctx.counts["skipped"], ctx.counts["failed"], groups)
