"""Running the whole study: the baselines first (``study``), then every semi-supervised approach generation by
generation (``semisup.runner``).

Resumable by construction: the database says which trainings are finished; an unfinished one continues from its
last epoch checkpoint; a finished one is never redone; derived training sets are written atomically and reused;
rankings are recomputed from the database. A training whose loss diverges is recorded as failed and the study
goes on.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..config import Config, format_config
from ..data.prepared import PreparedData, load_prepared
from ..engine.kinds import validation_setting
from ..engine.probe import FORWARD_SPEEDUP, probe_rates
from ..engine.runtime import Runtime, cpu_threads, load_note, worker_gpus
from ..errors import ConfigError, DataError
from ..outputs import check_output_folder, holds_only
from ..study.approaches import BASELINES, study_splits
from ..study.executors import EXECUTORS, make_executor
from ..study.graph import Node, run_plan
from ..study.groups import StudyContext, record
from ..study.keys import StudyLayout
from ..study.lock import LOCK_NAME, study_lock
from ..study.progress import StudyProgress
from ..study.store import ResultStore
from ..study.tasks import TaskResult
from .plan import DiskNeeds, disk_needs, plan_study
from .recipes import RECIPES, required_baselines
from .runner import n_values


@dataclass(frozen=True)
class StudySummary:
    trained: int  # trainings run (or resumed) by this call
    skipped: int  # already finished before
    failed: int  # failed in this call
    groups: int


def resolve_approaches(approaches: list[str]) -> tuple[list[str], list[str]]:
    """(baselines, semi-supervised approaches) to run, in order; baselines that an approach needs are added.
    ``all``: every baseline and approach (the full paper study)."""
    known = list(BASELINES) + list(RECIPES)
    if "all" in approaches:
        approaches = known + [a for a in approaches if a not in known and a != "all"]
    unknown = [a for a in approaches if a not in known]
    if unknown or not approaches:
        raise ConfigError(f"unknown approach {', '.join(unknown) or '(none given)'}; choose from: {', '.join(known)} "
                          "(or all)")
    semisup = [a for a in approaches if a in RECIPES]
    needed = set(approaches) | {b for a in semisup for b in required_baselines(a)}
    return [b for b in BASELINES if b in needed], semisup


def is_study(folder: Path) -> bool:
    """Whether ``folder`` is a study folder (it has the results database)."""
    return StudyLayout(Path(folder)).database.exists()


def check_settings(data: PreparedData, config: Config, semisup: list[str], baselines: list[str] = ()) -> None:
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
    check_protocol(data, config, semisup, baselines)
    splits = study_splits(data, config.study.labeled_subset)
    unknown = [name for name in config.study.eval_splits if splits.resolve(name) not in data.splits]
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


def check_protocol(data: PreparedData, config: Config, semisup: list[str], baselines: list[str] = ()) -> None:
    """What a study on the standard protocol cannot do, refused in one line: approaches made for the paper
    protocol's tiny U-Nets, IM labels of the other protocol, a centre-crop rule with outputs at full size."""
    protocol = data.protocol

    def protocols_of(name: str) -> tuple[str, ...]:
        return (BASELINES[name] if name in BASELINES else RECIPES[name]).protocols

    for name in list(baselines) + list(semisup):
        if protocol not in protocols_of(name):
            runs_on = [a for a in list(BASELINES) + list(RECIPES) if protocol in protocols_of(a)]
            raise ConfigError(f"{name} runs on the {' and '.join(protocols_of(name))} protocol; {data.root} is "
                              f"{protocol}: on it the study runs {', '.join(runs_on)}")
    im_label = config.semisup.im_label
    if (protocol, im_label) in (("standard", "im_class"), ("paper", "ignore")):
        fix = ("the standard protocol's class 0 is road: use ignore (255, left out of the loss) or teacher"
               if protocol == "standard" else "the paper protocol has no ignore label: use im_class or teacher")
        raise ConfigError(f"semisup.im_label {im_label}: {fix} (or auto)")
    study = config.study
    if protocol == "paper" and (study.eval_rule != "whole" or study.eval_window):
        raise ConfigError(f"study.eval_rule {study.eval_rule}: the paper protocol scores whole images at its "
                          "416x208; the rules apply to the standard protocol; leave study.eval_rule at whole")
    if protocol == "paper" and (config.train.val_rule not in ("auto", "whole") or config.train.val_window):
        raise ConfigError(f"train.val_rule {config.train.val_rule}: the paper protocol picks the best epoch by the "
                          "study's soft IoU on whole images at its 416x208; leave train.val_rule at auto")
    if study.eval_rule == "center-crop" and (study.save_predictions or study.full_resolution):
        raise ConfigError("study.eval_rule center-crop predicts only the centre crop, so it cannot write "
                          "full-size predictions or score at the original resolution; turn off "
                          "study.save_predictions and study.full_resolution, or choose another rule")


def open_study(out: Path, data: PreparedData, config: Config) -> tuple[StudyLayout, ResultStore]:
    """Create or reopen a study folder; refuse one that was started with other settings or other data."""
    check_output_folder(out, what="a study", ours=lambda folder: is_study(folder) or holds_only(LOCK_NAME)(folder),
                        inputs=[data.root])
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


def fail_training(ctx: StudyContext, node: Node, reason: str) -> None:
    """Record a training that cannot run (a step it waits for failed) as failed, with the reason."""
    ctx.store.start(node.key, node.seed, ctx.config.digest())
    record(ctx, node.key, TaskResult(str(node.key), "failed", 0.0, error=reason))


def run_study(data_dir: Path, out: Path, approaches: list[str], config: Config, *, show_progress: bool = True,
              log: Callable[[str], None] = lambda message: None, executor: str = "serial", parallel: int = 1,
              ray_address: str | None = None, cpus_per_task: float = 1.0, gpus_per_task: float = 0.0
              ) -> StudySummary:
    """Run (or continue) the study in ``out`` for the given approaches, its tasks on ``executor`` (serial, local
    with ``parallel`` processes, or ray)."""
    baselines, semisup = resolve_approaches(approaches)
    data = load_prepared(data_dir)
    data.verify()
    check_settings(data, config, semisup, baselines)
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    added = [b for b in baselines if b not in approaches]
    if added:
        log(f"adding {', '.join(a.upper() for a in added)}: the semi-supervised approaches start from them")
    with study_lock(Path(out), inputs=[data.root]):
        layout, store = open_study(out, data, config)
        plan = plan_study(baselines, semisup, config, data, layout)
        progress = StudyProgress(len(plan.trainings), layout.log, show_progress)
        with store:
            gpus = tuple(worker_gpus(config.train.device)) if executor == "local" else ()
            runner = make_executor(executor, parallel, ray_address, cpus_per_task, gpus_per_task, gpus)
            try:
                if not store.trainings():  # a new study: will its outputs fit?
                    warning = disk_warning(disk_needs(plan), layout.root, config.study.keep_datasets, runner.slots)
                    if warning:
                        log(warning)
                threads = runner.task_threads(config.train.threads)
                note = load_note(cpu_threads(threads)) if executor != "ray" else None  # Ray's nodes: elsewhere
                if note and Runtime.from_config(config.train).device.type == "cpu":
                    log(f"note: {note}")
                progress.start(sum(row.status in ("done", "failed") for row in store.trainings()))
                ctx = StudyContext(layout, store, data, config, progress, log, show_progress, threads=threads)
                run_plan(plan, ctx, runner, fail_training)
            finally:
                runner.close()
                progress.close()
    groups = sum(1 for group in plan.groups() if group.role == "models")
    return StudySummary(ctx.counts["trained"], ctx.counts["skipped"], ctx.counts["failed"], groups)


def disk_warning(needs: DiskNeeds, out: Path, keep_datasets: bool, slots: int) -> str | None:
    """A one-line warning when a new study's outputs would not fit on the disk of ``out`` (None when they do)."""
    wanted, free = needs.at_once(keep_datasets, slots), free_bytes(out)
    if free >= wanted:
        return None
    hint = (f"; with --set study.keep_datasets=false about {_gigabytes(needs.at_once(False, slots))}"
            if keep_datasets and needs.at_once(False, slots) < wanted else "")
    return (f"warning: the study's outputs take about {_gigabytes(wanted)} and {out} has {_gigabytes(free)} free"
            f"{hint} (study --plan gives the details)")


def training_statuses(out: Path) -> dict[str, str]:
    """Training key -> status of the study in ``out`` (empty when none is there), read only: a driver running
    there is not disturbed."""
    database = StudyLayout(out).database
    if not database.exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
        try:
            return dict(db.execute("SELECT key, status FROM trainings").fetchall())
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{database}: not a readable results database ({exc}); restore it from a copy, or plan "
                        "the study under a new --out") from None


def describe_plan(data_dir: Path, out: Path, approaches: list[str], config: Config, throughput: float | None,
                  executor: str = "serial", parallel: int = 1, gpus_per_task: float = 0.0,
                  throughput_all: float | None = None) -> str:
    """``study --plan``: the tasks per approach, run and generation, the trainings and images seen, and the time
    at ``throughput`` images/s per training (measured here by a short probe when None); for a study begun in
    ``out``, how many trainings are finished and what is left. ``throughput_all``: the images/s of all the
    layout's tasks at once together (as benchmarks/gpu_check.sh measures them), for its wall time."""
    if throughput_all is not None and executor == "serial":
        raise ConfigError("--throughput-all is the rate of several tasks at once: give it with --executor local "
                          "--parallel N or --executor ray")
    baselines, semisup = resolve_approaches(approaches)
    data = load_prepared(data_dir)
    check_settings(data, config, semisup, baselines)
    plan = plan_study(baselines, semisup, config, data, StudyLayout(Path(out)))
    width, height = data.size
    # a training step sees the stored images (paper) or the online augmentation's crops (standard)
    step_height, step_width = (height, width) if data.protocol == "paper" else tuple(config.online.crop)
    source, speedup = "given", FORWARD_SPEEDUP
    speedup_source = "assumed: a training step is a forward pass and a backward pass of about twice its cost"
    if throughput is None:
        throughput, speedup = probe_rates(config.train, step_height, step_width, data.num_classes)
        source = f"measured here: {config.train.batch_size} images of {step_width}x{step_height} per step"
        speedup_source = "measured here"
    pixels = step_height * step_width

    def seconds(node, rate: float = throughput) -> float:
        """A task's time with each training at ``rate`` images/s, predicting ``speedup`` times as fast per pixel."""
        return node.images / rate + node.predicted / (rate * speedup * pixels)

    statuses = training_statuses(Path(out))  # a study begun in ``out``: how far it is
    rows: dict[tuple, list] = {}
    for node in plan.nodes:
        group = node.group
        row = rows.setdefault((group.approach + (" EvalNets" if group.role == "evalnets" else ""), group.run,
                               group.n, group.generation), [0, 0, 0, 0, 0, 0.0])
        row[0] += 1
        row[3] += node.predicted
        row[5] += seconds(node)
        if node.training:
            row[1] += 1
            row[2] += node.images
            row[4] += statuses.get(str(node.key)) in ("done", "failed")
    progress = " finished |" if statuses else ""
    lines = [f"plan of the study in {out}: {', '.join(baselines + semisup)} on {data_dir} ({data.protocol} protocol, "
             f"{width}x{height})", "",
             f"| approach | run | n | generation | tasks | trainings |{progress} images seen in training | "
             "Mpx predicted | hours |",
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if statuses else "")]
    for (name, run, n, generation), (tasks, trainings, images, predicted, finished, spent) in rows.items():
        lines.append(f"| {name} | {run or '-'} | {n or '-'} | {generation + 1} | {tasks} | {trainings} | "
                     + (f"{finished} | " if statuses else "") + f"{images:,} | {predicted / 1e6:,.0f} | "
                     f"{spent / 3600:.2f} |")
    total_images = sum(node.images for node in plan.trainings)
    total_predicted = sum(node.predicted for node in plan.nodes)
    total_seconds = sum(seconds(node) for node in plan.nodes)
    predicting = total_seconds - total_images / throughput
    kinds = {}
    for node in plan.nodes:
        kinds[node.kind] = kinds.get(node.kind, 0) + 1
    hours = total_seconds / 3600
    lines += ["", f"{len(plan.nodes)} tasks ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}); "
              f"{len(plan.trainings)} trainings; {total_images:,} images seen in training "
              "(estimated where a training set is made during the study)",
              f"{total_predicted / 1e6:,.0f} Mpx predicted: each training's validations (val after each validated "
              f"epoch, {validation_setting(config.train, config.study.eval_rule)[0]}) and scoring "
              f"({', '.join(config.study.eval_splits)}, {config.study.eval_rule}), and the teachers' labels of "
              "each generation, the EvalNets' rows, validations and scoring of masks (an EvalNet's pass counted as a "
              "segmentation network's of as many pixels)",
              f"at {throughput:.1f} images/s per training ({source}) and predictions {speedup:.1f}x as fast per "
              f"pixel ({speedup_source}): {hours:.1f} hours one task at a time, of which {predicting / 3600:.1f} "
              "predicting"]
    if statuses:
        status = {node.id: statuses.get(str(node.key)) for node in plan.trainings}
        counts = Counter(status.values())
        left = [node for node in plan.trainings if status[node.id] not in ("done", "failed")]
        left_images = sum(node.images for node in left)
        lines.append(f"begun in {out}: {counts['done'] + counts['failed']} of {len(plan.trainings)} trainings "
                     f"finished ({counts['failed']} failed), {counts['running']} running or interrupted; left: "
                     f"{left_images:,} images seen in training, {sum(seconds(n) for n in left) / 3600:.1f} hours "
                     "one training at a time (with their validations and scoring)")
    if data.protocol == "standard":
        longest = max(plan.trainings, key=seconds, default=None)
        if longest is not None:
            lines.append(f"standard protocol: the longest training ({longest.key}) sees {longest.images:,} images of "
                         f"{step_width}x{step_height} and predicts {longest.predicted / 1e6:,.0f} Mpx: "
                         f"{seconds(longest) / 3600:.1f} hours at that rate. "
                         "At the published recipe (crop 801, 240 epochs) a student's training takes tens of "
                         "GPU-hours; measure the rate of your GPU with benchmarks/deeplab_step.py and pass it as "
                         "--throughput")
    slots = 1 if executor == "serial" else parallel if executor == "local" else \
        max(1, round(1 / gpus_per_task)) if gpus_per_task else parallel
    lines.append(_disk_line(disk_needs(plan), Path(out), config.study.keep_datasets, slots))
    if throughput_all is None and executor == "local" and Runtime.from_config(config.train).device.type != "cuda":
        lines.append(f"with --executor local --parallel {slots} on this CPU the processes share its cores: "
                     f"about {hours:.1f} hours as well (no training is faster than the one probed)")
    elif executor != "serial":  # each task at its share of the rate of all together (given), or at one's rate
        each = throughput if throughput_all is None else throughput_all / slots
        critical = _critical_path(plan, lambda node: seconds(node, each)) / 3600
        wall = max(sum(seconds(node, each) for node in plan.nodes) / slots / 3600, critical)
        if throughput_all is None:
            lines.append(f"with --executor {executor} and {slots} tasks at once, each at that rate: about {wall:.1f} "
                         f"hours (the longest chain of dependent tasks alone: {critical:.1f} h); measure the "
                         "rate of trainings sharing a device with benchmarks/study_throughput.py")
        else:
            lines.append(f"with --executor {executor} and {slots} tasks at once, at {throughput_all:,.1f} images/s "
                         f"together (given), {each:,.1f} each: about {wall:.1f} hours (the longest chain of "
                         f"dependent tasks alone at that rate each: {critical:.1f} h)")
    return "\n".join(lines)


def _gigabytes(size: float) -> str:
    return f"{size / 1e9:,.1f} GB" if size >= 1e9 else f"{size / 1e6:,.1f} MB"


def free_bytes(out: Path) -> int:
    """Free space on the filesystem ``out`` will be on (its nearest existing folder)."""
    where = Path(out).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    return shutil.disk_usage(where).free


def written_bytes(out: Path) -> int:
    """What a begun study has written in ``out`` already (file sizes; links are not followed)."""
    total = 0
    for folder, _, files in os.walk(out):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed meanwhile (a running study deletes sets)
                pass
    return total


def _disk_line(needs: DiskNeeds, out: Path, keep_datasets: bool, slots: int) -> str:
    """The disk the study's outputs take, kept or deleted as each generation finishes, beside the free space (on a
    begun study: beside what it has written already, which the free space no longer includes)."""
    free, written = free_bytes(out), written_bytes(out)
    line = (f"disk: about {_gigabytes(needs.total)} in {out} ({_gigabytes(needs.checkpoints)} of checkpoints, "
            f"{_gigabytes(needs.total - needs.checkpoints)} of training sets under datasets/, the largest "
            f"step's {_gigabytes(max(needs.deletable, default=0))}); ")
    if keep_datasets:
        line += ("with --set study.keep_datasets=false each generation's sets are deleted once its students finish "
                 f"(and the EvalNets' rows once they are trained): at most about "
                 f"{_gigabytes(needs.at_once(False, slots))} at once")
    else:
        line += f"study.keep_datasets=false: at most about {_gigabytes(needs.at_once(False, slots))} at once"
    line += f"; {_gigabytes(free)} free there" + (f", {_gigabytes(written)} written already" if written else "")
    if free < needs.at_once(keep_datasets, slots) - written:
        line += " (not enough: free some space, or choose another --out)"
    return line


def _critical_path(plan, seconds: Callable) -> float:
    """Seconds of the longest chain of dependent tasks, each taking ``seconds(node)`` (rankings take none)."""
    finish: dict[str, float] = {}
    for node in plan.nodes:  # the plan is in an order where every node comes after what it waits for
        start = max((finish[d] for d in node.after), default=0.0)
        finish[node.id] = start + seconds(node)
    return max(finish.values(), default=0.0)
