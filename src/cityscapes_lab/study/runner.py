"""Running a study: the baselines first, then every semi-supervised approach generation by generation.

Resumable by construction: the database says which trainings are finished; an unfinished one continues from its
last epoch checkpoint; a finished one is never redone; derived training sets are written atomically and reused;
rankings are recomputed from the database. A training whose loss diverges is recorded as failed and the study
goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .. import atomic
from ..config import Config, format_config
from ..data.prepared import PreparedData, load_prepared
from ..errors import ConfigError
from ..semisup.recipes import RECIPES, required_baselines
from ..semisup.runner import planned_trainings, run_approach
from .approaches import BASELINES, ensure_aldt_set
from .groups import StudyContext, make_task, train_group
from .keys import GroupKey, StudyLayout, TrainingKey
from .store import ResultStore


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
    added = [b for b in baselines if b not in approaches]
    if added:
        log(f"adding {', '.join(a.upper() for a in added)}: the semi-supervised approaches start from them")
    data = load_prepared(data_dir)
    if data.protocol != "paper":
        raise ConfigError(f"{data_dir}: the study follows the paper protocol, this folder is {data.protocol}; "
                          "prepare the data with --protocol paper")
    layout, store = open_study(out, data, config)
    total = len(baselines) * config.study.runs * config.study.models + sum(
        planned_trainings(approach, config) for approach in semisup)
    with store, tqdm(total=total, desc="study", unit="model", disable=None if show_progress else True,
                     dynamic_ncols=True) as bar:
        ctx = StudyContext(layout, store, data, config, bar, log, show_progress)
        groups = sum(run_baseline(ctx, approach) for approach in baselines)
        groups += sum(run_approach(ctx, approach) for approach in semisup)
    return StudySummary(ctx.counts["trained"], ctx.counts["skipped"], ctx.counts["failed"], groups)
