"""A training as a self-contained task: everything it needs is in the task (paths, settings, seed), everything
it makes is in its folder (checkpoint, curves, result). ``execute`` runs one anywhere: in this process now, on a
cluster worker later. Rerun after a kill, it continues from its last epoch checkpoint; rerun after it finished,
it returns the stored result."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .. import atomic
from ..config import Config, OnlineAugmentConfig, TrainConfig
from ..data.arrays import load_arrays
from ..data.augment import AugmentParams
from ..data.prepared import PreparedData, SplitArrays, load_prepared
from ..engine import kinds
from ..engine.evaluate import FullResolutionScorer, SplitScorer, cropped, write_predictions
from ..engine.inference import predicted_chunks
from ..engine.prediction import rule_protocol
from ..engine.runtime import Runtime, cpu_threads, gpu_share
from ..engine.train import FitResult, TrainingDiverged, train
from ..models.registry import architecture_options, training_model
from ..models.checkpoints import load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class TrainingTask:
    key: str  # the TrainingKey, as text
    seed: int
    train: dict  # TrainConfig fields
    data: str  # prepared folder
    train_set: str  # a split of the prepared folder, or the path of an array folder (derived sets)
    out_dir: str
    eval_splits: tuple[str, ...] = ("val", "test", "train_unlabeled")
    full_resolution: bool = False
    predictions_dir: str | None = None  # write official-format predictions of every eval split here
    show_progress: bool = True
    # consistency-loss fine-tuning (engine.kinds.consistency) instead of training from scratch
    init_checkpoint: str | None = None  # start from these weights
    consistency_views: AugmentParams | None = None  # the photometric augmentation of its two views
    consistency_epochs: int = 0
    threads: int = 0  # torch threads (the executor's share of the cores, or train.threads; 0: all of them)
    online: dict = field(default_factory=dict)  # OnlineAugmentConfig fields: the standard protocol's training
    eval_rule: str = "whole"  # the standard protocol's evaluation rule (engine.prediction.PROTOCOLS)
    eval_window: int = 0  # its window or crop (0: the rule's own)
    labeled: str = "train_labeled"  # the study's labeled and unlabeled splits (consistency-loss fine-tuning)
    unlabeled: str = "train_unlabeled"

    def run(self) -> TaskResult:
        return execute(self)


@dataclass(frozen=True)
class TaskResult:
    key: str
    status: str  # done | failed
    seconds: float
    epochs: int = 0
    best_epoch: int | None = None
    checkpoint: str | None = None
    error: str | None = None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> value


def open_train_set(data: PreparedData, train_set: str) -> SplitArrays:
    """A prepared split by name, or a derived array set by path."""
    return data.split(train_set) if train_set in data.splits else load_arrays(Path(train_set))


def note_worker(out: Path) -> None:
    """``worker.json``: the host, process, torch threads, GPU (its ``CUDA_VISIBLE_DEVICES``) and GPU share running
    the task now (to find it; nothing reads it back)."""
    import os
    import socket

    atomic.write_json(out / "worker.json", {"host": socket.gethostname(), "pid": os.getpid(),
                                            "threads": torch.get_num_threads(), "gpu_share": gpu_share(),
                                            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})


@dataclass(frozen=True)
class AldtSetTask:
    """The ALDT set of a study (the labeled images and their augmented copies), built once."""

    data: str
    folder: str
    aldt: dict  # AugmentConfig fields
    seed: int

    def run(self) -> str:
        from ..config import AugmentConfig
        from .approaches import ensure_aldt_set

        return str(ensure_aldt_set(load_prepared(self.data), Path(self.folder), AugmentConfig(**self.aldt), self.seed))


def _write_history(path: Path, history: list[dict]) -> None:
    """``history.csv``: a row per epoch; an epoch without validation (train.val_every) leaves its columns empty."""
    columns = list(dict.fromkeys(key for row in history for key in row))
    rows = [",".join(columns)] + [",".join(f"{row[k]}" if k in row else "" for k in columns) for row in history]
    atomic.write_text(path, "\n".join(rows if history else []) + "\n")


def execute(task: TrainingTask) -> TaskResult:
    """Train, keep the best epoch, score it on every eval split; write ``best.pt``, ``history.csv`` and
    ``result.json`` in ``task.out_dir``."""
    out = Path(task.out_dir)
    done = out / "result.json"
    if done.exists():
        return TaskResult(**json.loads(done.read_text()))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    config = TrainConfig(**task.train)
    torch.set_num_threads(cpu_threads(task.threads or config.threads))
    note_worker(out)
    runtime = Runtime.from_config(config)
    data = load_prepared(task.data)
    torch.manual_seed(task.seed)
    model, options = training_model(config, data.num_classes)
    try:
        result = _train(model, data, task, config, runtime)
    except TrainingDiverged as exc:
        outcome = TaskResult(task.key, "failed", time.perf_counter() - start, error=str(exc))
        atomic.write_json(done, asdict(outcome))
        return outcome
    model.load_state_dict(result.best_state)
    checkpoint = out / "best.pt"
    best_score = next(iter(result.best.values()))
    # the size the network must see: the paper protocol's fixed input, or a downscaled standard copy's size; a
    # network trained at the original resolution takes images as they are (any size, any window or crop)
    full_size = tuple(data.size) == tuple(data.meta["source"]["original_size"])
    input_size = None if data.protocol == "standard" and full_size else list(data.size)
    save_checkpoint(checkpoint, {
        "model_name": config.model, "model_options": architecture_options(options), "num_classes": data.num_classes,
        "protocol": data.protocol, "input_size": input_size, "state_dict": result.best_state,
        "best_epoch": result.best_epoch, "val_score": best_score if task.consistency_views is None else -best_score,
        "seed": task.seed, "key": task.key})
    _write_history(out / "history.csv", result.history)
    scores = score_model(model, data, task, runtime)
    outcome = TaskResult(task.key, "done", time.perf_counter() - start, result.epochs, result.best_epoch,
                         str(checkpoint), None, scores)
    atomic.write_json(done, asdict(outcome))
    (out / "last.pt").unlink(missing_ok=True)  # the finished result replaces the resume point
    return outcome


def _train(model: torch.nn.Module, data: PreparedData, task: TrainingTask, config: TrainConfig,
           runtime: Runtime) -> FitResult:
    """The task's training: the study's from scratch (the standard protocol's: online augmentation, 255 ignored,
    official val mIoU), or consistency-loss fine-tuning from ``init_checkpoint``."""
    if task.consistency_views is None and data.protocol == "standard":
        settings = Config(train=config, online=OnlineAugmentConfig(**task.online))
        rule = kinds.validation_rule(config, task.train["model"], task.eval_rule, task.eval_window)
        training = kinds.standard(model, open_train_set(data, task.train_set), data.split("val"), settings, runtime,
                                  seed=task.seed, protocol=data.protocol, val_rule=rule)
    elif task.consistency_views is None:
        training = kinds.study(model, open_train_set(data, task.train_set), data.split("val"), config, runtime,
                               seed=task.seed, num_classes=data.num_classes, ignore_index=data.ignore_index,
                               protocol=data.protocol)
    else:
        model.load_state_dict(load_checkpoint(task.init_checkpoint)["state_dict"])
        training = kinds.consistency(model, data.split(task.labeled), data.split(task.unlabeled),
                                     data.split("val"), task.consistency_views, config, runtime,
                                     epochs=task.consistency_epochs, seed=task.seed)
    return train(model, training, config, runtime, checkpoint=Path(task.out_dir) / "last.pt", desc=task.key,
                 show_progress=task.show_progress)


def score_model(model: torch.nn.Module, data: PreparedData, task: TrainingTask, runtime: Runtime
                ) -> dict[str, dict[str, float]]:
    """Both metric families on every eval split the prepared data has (splits without labels are skipped); on the
    standard protocol under the task's evaluation rule. Predicted, written and scored a chunk of images at a time,
    so that memory does not grow with the split."""
    scores = {}
    rule = rule_protocol(task.train["model"], task.eval_rule, task.eval_window) if data.protocol == "standard" else None
    for name in task.eval_splits:
        if name not in data.splits or not (data.has_labels(name) or task.predictions_dir):
            continue
        split = data.split(name)
        scored = split if rule is None else cropped(split, rule)
        scorer = None if split.labels is None else SplitScorer(name, data.protocol, data.size[0] * data.size[1])
        full = None
        if (scorer is not None and task.full_resolution and data.meta["sources"].get("val")
                and set(split.ids) <= set(data.meta["sources"]["val"]["ids"])):
            full = FullResolutionScorer(Path(data.meta["source"]["path"]), data.protocol)
        for rows, predictions in predicted_chunks(model, split.images, runtime, rule, data.num_classes):
            ids = split.ids[rows]
            if task.predictions_dir:
                write_predictions(Path(task.predictions_dir) / name, predictions, ids, data.protocol,
                                  tuple(data.meta["source"]["original_size"]))
            if scorer is not None:
                scorer.add_rows(predictions, scored, rows)
            if full is not None:
                full.add(predictions, ids)
        if scorer is None:
            continue
        result = scorer.result()
        if full is not None:
            result = replace(result, full_resolution=full.result())
        scores[name] = {k: float(v) for k, v in result.summary().items()}
    return scores
