"""The training loop: one for every kind of training (``engine.kinds``), read top to bottom.

An epoch is one or more phases; a phase runs its steps (a ``steps`` function on batches of a data source, in
the study's reshuffled order), then, where asked, the model is validated. The weights of the best epoch by the
validation rule are kept, and a checkpoint is written after every epoch: a training killed at any moment and
started again resumes at the start of the epoch it was in and ends with exactly the result of an uninterrupted
one. Every setting of ``[train]`` applies here, to every kind of training, or is refused with a ConfigError.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..config import TrainConfig
from ..errors import ConfigError
from ..interrupts import raise_if_interrupted
from ..memory import keep_freed_memory
from ..models.checkpoints import load_checkpoint, save_checkpoint
from .optim import DecoupledAdamW
from .runtime import Runtime
from .sources import Batch, BatchStream, Source

RECOMPUTE_PIXELS = 1_000_000  # pixels per batch from which train.recompute=auto recomputes on the CPU

Step = Callable[[nn.Module, Batch, Runtime], torch.Tensor]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says when."""


@dataclass(frozen=True)
class Phase:
    """A pass of an epoch: ``steps`` batches of ``source`` (train.steps_per_epoch instead, when set) in the
    order of a BatchStream seeded with ``seed``, each turned into a loss by ``step``."""

    source: Source
    step: Step
    seed: int
    steps: int
    name: str = "loss"  # the phase's column in the history
    drop_last: bool = False  # leave out each pass's short last batch (BatchStream)


@dataclass(frozen=True)
class Validation:
    """How a model is judged after a phase: ``measure(model)`` returns figures (in eval mode, no gradients);
    the best epoch is the one whose ``criterion`` is strictly better than every earlier one."""

    measure: Callable[[nn.Module], dict[str, float]]
    criterion: str
    higher_is_better: bool = True
    after_each_phase: bool = False  # consistency loss: validated after each of its two passes

    def better(self, figures: dict[str, float], best: dict[str, float]) -> bool:
        value, previous = figures[self.criterion], best.get(self.criterion)
        if previous is None:
            return not math.isnan(value)
        return value > previous if self.higher_is_better else value < previous


@dataclass(frozen=True)
class Training:
    """A kind of training, made by ``engine.kinds``: its phases, validation and epoch count."""

    phases: tuple[Phase, ...]
    validation: Validation
    epochs: int
    keras_epsilon: bool  # the epsilon rule of train.adam_epsilon_rule = auto (the study's Keras: on)


@dataclass(frozen=True)
class FitResult:
    best_state: dict[str, torch.Tensor] | None  # weights of the best epoch, on the CPU
    best_epoch: int  # 0-based; -1 when no epoch was ever better (e.g. validation was NaN throughout)
    best: dict[str, float]  # the validation figures of that epoch
    history: list[dict] = field(default_factory=list)  # one row per epoch
    resumed_at: int = 0  # the epoch a resumed training restarted at (0: started fresh)

    @property
    def epochs(self) -> int:
        return len(self.history)


def peak_lr(config: TrainConfig) -> float:
    """train.lr, scaled by the linear rule when train.lr_reference_batch is set: the learning rate follows the
    total batch (over all processes)."""
    return config.lr * (config.batch_size / config.lr_reference_batch if config.lr_reference_batch else 1.0)


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total``: a linear warm-up over
    ``train.warmup_steps``, then constant (the study) or poly (power 0.9 to 0 at ``total``)."""
    peak = peak_lr(config)
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "poly":
        done = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return peak * (1 - done) ** 0.9
    return peak


def parameter_groups(model: nn.Module, head_lr_multiplier: float) -> list[dict]:
    """All parameters in one group, or (train.head_lr_multiplier) the backbone's at the learning rate and the
    rest at ``head_lr_multiplier`` times it (``lr_scale``); ConfigError for a network without a ``backbone``."""
    if head_lr_multiplier == 1.0:
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ConfigError(f"train.head_lr_multiplier {head_lr_multiplier}: {type(model).__name__} has no "
                          "pretrained backbone to set apart; leave it at 1")
    inside = {id(p) for p in backbone.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) in inside], "lr_scale": 1.0},
            {"params": [p for p in model.parameters() if id(p) not in inside], "lr_scale": head_lr_multiplier}]


def make_optimizer(model: nn.Module, config: TrainConfig, keras_epsilon_auto: bool) -> torch.optim.Optimizer:
    """The optimizer of the settings: the study's AdamW (its weight decay and epsilon rules), or SGD with
    momentum and an L2 weight decay (the semi-supervised benchmark's recipe)."""
    groups = parameter_groups(model, config.head_lr_multiplier)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=peak_lr(config), momentum=config.momentum,
                               weight_decay=config.weight_decay)
    rule = config.adam_epsilon_rule
    return DecoupledAdamW(groups, lr=peak_lr(config), decay=config.weight_decay, eps=config.adam_eps,
                          keras_epsilon=rule == "keras" or (rule == "auto" and keras_epsilon_auto),
                          decay_scaled_by_lr=config.weight_decay_rule == "lr_scaled")


def sync_batch_norm(model: nn.Module, config: TrainConfig, runtime: Runtime) -> nn.Module:
    """train.sync_bn: BatchNorm statistics over all processes under DDP on GPUs (auto, on), or per process (off);
    ConfigError for on where it cannot apply (PyTorch's SyncBatchNorm runs on GPUs only)."""
    distributed_gpus = runtime.world_size > 1 and runtime.device.type == "cuda"
    if config.sync_bn == "on" and not distributed_gpus:
        raise ConfigError("train.sync_bn on: SyncBatchNorm needs several processes on GPUs (torchrun with CUDA); "
                          "use auto, which turns it on there and off elsewhere")
    if distributed_gpus and config.sync_bn != "off":
        if getattr(model, "recompute", False):  # SyncBatchNorm would replace the rerun-aware BatchNorm2d
            raise ConfigError("train.recompute on with SyncBatchNorm (DDP on GPUs): the recomputed forward pass would "
                              "update the BatchNorm statistics a second time; set train.recompute=off (GPUs rarely "
                              "need it) or train.sync_bn=off")
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def set_recompute(model: nn.Module, config: TrainConfig, runtime: Runtime, pixels: int) -> None:
    """train.recompute: on, off, or auto (on for the CPU once a batch has RECOMPUTE_PIXELS pixels)."""
    if not hasattr(model, "recompute"):
        if config.recompute == "on":
            raise ConfigError(f"train.recompute on: {type(model).__name__} cannot recompute its activations; use "
                              "auto or off")
        return
    large = runtime.batch_size * pixels >= RECOMPUTE_PIXELS
    model.recompute = config.recompute == "on" or (config.recompute == "auto" and runtime.device.type == "cpu"
                                                   and large)


def _finite_everywhere(value: torch.Tensor, runtime: Runtime) -> bool:
    """Whether ``value`` is finite in every training process (so that all of them stop together)."""
    bad = (~torch.isfinite(value)).float()
    if runtime.world_size > 1:
        dist.all_reduce(bad)
    return not bool(bad)


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _resume(path: Path, model: nn.Module, optimizer, scaler, criterion: str, runtime: Runtime) -> dict:
    saved = load_checkpoint(path, map_location=runtime.device)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    best = saved.get("best")
    if not isinstance(best, dict):  # resume points of earlier versions kept only the criterion's value
        value = next((saved[k] for k in ("best_score", "best_loss", "best") if k in saved), None)
        best = {criterion: value} if isinstance(value, float) and math.isfinite(value) else {}
    return {"epoch": saved["epoch"], "best": best, "best_epoch": saved.get("best_epoch", -1),
            "best_state": saved.get("best_state"), "history": saved.get("history", [])}


def train(model: nn.Module, training: Training, config: TrainConfig, runtime: Runtime, *, checkpoint: Path,
          desc: str = "train", show_progress: bool = True) -> FitResult:
    """Train ``model`` as ``training`` describes; returns the best epoch's weights and figures.
    Raises TrainingDiverged when the loss becomes NaN or infinite (checked as train.nan_check says)."""
    phases, validation = training.phases, training.validation
    if config.keep_freed_memory:
        keep_freed_memory()  # a CPU step otherwise page-faults its activations in again every step (memory.py)
    set_recompute(model, config, runtime, max(phase.source.pixels for phase in phases))
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    model = sync_batch_norm(model, config, runtime)
    optimizer = make_optimizer(model, config, training.keras_epsilon)
    scaler = runtime.loss_scaler()
    steps = [config.steps_per_epoch or phase.steps for phase in phases]
    streams = [BatchStream(len(phase.source), runtime.batch_size, phase.seed, phase.drop_last) for phase in phases]
    total_steps = training.epochs * sum(steps)
    state = {"epoch": 0, "best": {}, "best_epoch": -1, "best_state": None, "history": []}
    if Path(checkpoint).exists():
        state = _resume(Path(checkpoint), model, optimizer, scaler, validation.criterion, runtime)
    resumed_at = state["epoch"]
    wrapped = nn.parallel.DistributedDataParallel(model) if runtime.world_size > 1 else model
    forward = torch.compile(wrapped) if config.compile else wrapped

    def what(phase: Phase) -> str:
        return "training loss" if len(phases) == 1 else f"training loss ({phase.name})"

    def judge(row: dict, suffix: str = "") -> None:
        """Validate; keep the weights if they are the best so far (every epoch with train.keep = last)."""
        figures = validation.measure(model)
        row.update({f"{name}{suffix}": value for name, value in figures.items()})
        if config.keep == "last" or validation.better(figures, state["best"]):
            state.update(best=figures, best_epoch=state["epoch"], best_state=_cpu_copy(model.state_dict()))

    bar = tqdm(total=total_steps, initial=state["epoch"] * sum(steps), desc=desc, unit="step", leave=False,
               disable=None if show_progress and runtime.main else True, dynamic_ncols=True)
    with bar:
        while state["epoch"] < training.epochs:
            start, row = time.perf_counter(), {"epoch": state["epoch"] + 1}
            validate = row["epoch"] % config.val_every == 0 or row["epoch"] == training.epochs  # train.val_every
            step_number = state["epoch"] * sum(steps)  # the schedule's count of optimiser steps
            for index, (phase, count, stream) in enumerate(zip(phases, steps, streams)):
                forward.train()
                total = torch.zeros((), device=runtime.device)
                first = state["epoch"] * count
                for step in range(first, first + count):
                    raise_if_interrupted()
                    lr = learning_rate(config, step_number, total_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * group.get("lr_scale", 1.0)  # (older checkpoints: one group)
                    batch = phase.source.batch(stream.batch(step)[runtime.rank::runtime.world_size], step, runtime)
                    loss = phase.step(forward, batch, runtime)
                    if config.nan_check == "step" and not _finite_everywhere(loss.detach(), runtime):
                        raise TrainingDiverged(f"the {what(phase)} became {float(loss.detach())} at step {step}")
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                    else:
                        loss.backward()
                    if config.grad_clip > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    total += loss.detach()
                    step_number += 1
                    bar.update(1)
                mean = total / max(1, count)
                if config.nan_check == "epoch" and not _finite_everywhere(mean, runtime):
                    raise TrainingDiverged(f"the {what(phase)} became {float(mean)} in steps {first}.."
                                           f"{first + count - 1}")
                row[phase.name] = float(mean)
                if validation.after_each_phase and index < len(phases) - 1 and validate:
                    judge(row, f"_after_{phase.name}")
            if validate:
                judge(row)
            row.update(lr=lr, seconds=time.perf_counter() - start)
            state["history"].append(row)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in (phases[-1].name, validation.criterion)})
            state["epoch"] += 1
            if runtime.main:
                save_checkpoint(checkpoint, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {}, **state})
            if runtime.world_size > 1:
                dist.barrier()  # every process resumes from the same checkpoint after a stop
    if state["best_state"] is None:
        raise TrainingDiverged(f"no epoch had a finite validation {validation.criterion}")
    return FitResult(state["best_state"], state["best_epoch"], state["best"], state["history"], resumed_at)
