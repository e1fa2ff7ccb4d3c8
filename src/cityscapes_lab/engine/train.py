"""``fit``: the study's training recipe with a checkpoint after every epoch, so that a killed training resumes at
the start of the epoch it was in and ends with exactly the result of an uninterrupted one."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..config import TrainConfig
from ..data.prepared import SplitArrays
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import BatchStream, resolve_precision, train_steps
from .losses import pixel_cross_entropy
from .optim import DecoupledAdamW

RECOMPUTE_PIXELS = 1_000_000  # pixels per batch from which train.recompute=auto recomputes on the CPU


@dataclass(frozen=True)
class FitResult:
    best_state: dict[str, torch.Tensor]  # weights of the best epoch (by the validation score), on the CPU
    best_epoch: int  # 0-based
    best_score: float
    history: list[dict] = field(default_factory=list)  # one row per epoch: epoch, loss, val_score, seconds
    resumed_at: int = 0  # the epoch a resumed training restarted at (0: started fresh)


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def fit(model: nn.Module, train: SplitArrays, validate: Callable[[nn.Module], float], config: TrainConfig, *,
        seed: int, ignore_index: int | None, checkpoint: Path, device: torch.device, desc: str = "train",
        show_progress: bool = True) -> FitResult:
    """Train ``model`` on ``train`` for ``config.epochs`` epochs of ``steps_per_epoch`` steps (the study: N // batch)
    and keep the weights of the epoch with the highest ``validate(model)`` (strictly higher wins, as Keras'
    save_best_only). ``checkpoint`` is written after every epoch and resumed from when present.
    Raises loop.TrainingDiverged when the loss becomes NaN or infinite."""
    precision = resolve_precision(config.precision, device)
    if hasattr(model, "recompute"):  # auto: where activations are large (the study's batch: 32 x 416 x 208)
        large = config.batch_size * train.images.shape[1] * train.images.shape[2] >= RECOMPUTE_PIXELS
        model.recompute = config.recompute == "on" or (config.recompute == "auto" and device.type == "cpu" and large)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = DecoupledAdamW(model.parameters(), lr=config.lr, decay=config.weight_decay, eps=config.adam_eps,
                               keras_epsilon=True)  # the study's Keras optimizer
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    steps = config.steps_per_epoch or max(1, len(train) // config.batch_size)
    stream = BatchStream(len(train), config.batch_size, seed)
    epoch, best_score, best_epoch, best_state, history = 0, -math.inf, -1, None, []
    if Path(checkpoint).exists():
        saved = load_checkpoint(checkpoint, map_location=device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        epoch, best_score, best_epoch = saved["epoch"], saved["best_score"], saved["best_epoch"]
        best_state, history = saved["best_state"], saved["history"]
    resumed_at = epoch
    forward = torch.compile(model) if config.compile else model
    loss_fn = lambda logits, target: pixel_cross_entropy(logits, target, ignore_index)  # noqa: E731
    bar = tqdm(total=config.epochs * steps, initial=epoch * steps, desc=desc, unit="step", leave=False,
               disable=None if show_progress else True, dynamic_ncols=True)
    with bar:
        while epoch < config.epochs:
            start = time.perf_counter()
            loss = train_steps(forward, optimizer, scaler, train.images, train.labels, stream,
                               range(epoch * steps, (epoch + 1) * steps), loss_fn, precision, device,
                               config.channels_last, bar.update)
            score = validate(model)
            if score > best_score:
                best_score, best_epoch, best_state = score, epoch, _cpu_copy(model.state_dict())
            history.append({"epoch": epoch + 1, "loss": loss, "val_score": score,
                            "seconds": time.perf_counter() - start})
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{score:.3f}")
            epoch += 1
            save_checkpoint(checkpoint, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {}, "epoch": epoch,
                "best_score": best_score, "best_epoch": best_epoch, "best_state": best_state, "history": history,
                "seed": seed})
    return FitResult(best_state, best_epoch, best_score, history, resumed_at)
