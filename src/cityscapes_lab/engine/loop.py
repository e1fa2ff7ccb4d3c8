"""The training and inference loop, read top to bottom: batches from memory, one epoch of steps, prediction,
the study's validation metric. Every dependency is a parameter; nothing here reads files."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..metrics.paper import soft_iou_sums


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says when."""


def available_devices() -> list[str]:
    """The devices this machine can run on: ``cpu`` and every visible ``cuda:N`` (and ``mps`` on Apple)."""
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    mps = getattr(torch.backends, "mps", None)
    return found + (["mps"] if mps is not None and mps.is_available() else [])


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """``auto`` (cuda if there is one, else cpu) or a named device; ConfigError, naming ``option`` and the devices
    that exist, for one this machine does not have."""
    available = available_devices()
    if name == "auto":
        return torch.device("cuda" if "cuda:0" in available else "cpu")
    here = f"this machine has: {', '.join(available)}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{option} {name!r}: unknown device; choose auto, cpu, cuda or cuda:N ({here})") from None
    if device.type == "cuda":
        if "cuda:0" not in available:
            why = f"torch {torch.__version__} is a CPU build" if torch.version.cuda is None else "no GPU is visible"
            raise ConfigError(f"{option} {name}: this machine has no CUDA device ({why}); use cpu or auto ({here})")
        if device.index is not None and f"cuda:{device.index}" not in available:
            raise ConfigError(f"{option} {name}: there is no such CUDA device ({here})")
    elif device.type == "mps" and "mps" not in available:
        raise ConfigError(f"{option} {name}: this machine has no Apple GPU ({here})")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{option} {name!r}: cityscapes-lab runs on cpu, cuda or mps, not {device.type} ({here})")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on a GPU that supports it (fp16 with loss scaling otherwise), fp32 on the CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass (the loss and the head stay in fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class BatchStream:
    """The study's data order: passes over the set, each in a fresh shuffled order, cut into batches; the last
    batch of a pass is kept even when short. Batch ``step`` is a pure function of (seed, step), so a resumed
    training sees exactly the batches it would have seen."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.batches_per_pass = math.ceil(size / batch_size)
        self._pass, self._order = -1, np.arange(0)

    def batch(self, step: int) -> np.ndarray:
        number, position = divmod(step, self.batches_per_pass)
        if number != self._pass:
            self._pass, self._order = number, np.random.default_rng([self.seed, number]).permutation(self.size)
        return self._order[position * self.batch_size:(position + 1) * self.batch_size]


def to_batch(images: np.ndarray, labels: np.ndarray | None, indices: np.ndarray, device: torch.device,
             channels_last: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (B, 3, H, W) uint8 and labels (B, H, W) int64 on ``device``. The (B, H, W, 3) arrays already are
    channels-last memory, so no layout copy is made unless NCHW is asked for."""
    x = torch.from_numpy(np.ascontiguousarray(images[indices])).permute(0, 3, 1, 2)
    if not channels_last:
        x = x.contiguous()
    y = torch.from_numpy(labels[indices].astype(np.int64)) if labels is not None else None
    if device.type != "cpu":
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True) if y is not None else None
    return x, y


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                images: np.ndarray, labels: np.ndarray, stream: BatchStream, steps: range,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], precision: str,
                device: torch.device, channels_last: bool, progress: Callable[[int], None] = lambda n: None) -> float:
    """One epoch: the given range of stream steps. Returns the mean loss; raises TrainingDiverged if it is not
    finite."""
    model.train()
    total = torch.zeros((), device=device)
    for step in steps:
        x, y = to_batch(images, labels, stream.batch(step), device, channels_last)
        with autocast(precision, device):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += loss.detach()
        progress(1)
    mean = float(total) / max(1, len(steps))
    if not math.isfinite(mean):
        raise TrainingDiverged(f"the training loss became {mean} in steps {steps.start}..{steps.stop - 1}")
    return mean


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device, precision: str,
                   channels_last: bool) -> Iterator[tuple[slice, torch.Tensor]]:
    """Logits (B, C, H, W) float32 of consecutive batches, in eval mode, with the slice of images they cover."""
    model.eval()
    for start in range(0, len(images), batch_size):
        rows = slice(start, min(start + batch_size, len(images)))
        x, _ = to_batch(images, None, np.arange(rows.start, rows.stop), device, channels_last)
        with autocast(precision, device):
            logits = model(x)
        yield rows, logits.float()


def predict(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device, precision: str = "fp32",
            channels_last: bool = True) -> np.ndarray:
    """Predicted class indices (N, H, W) uint8 of (N, H, W, 3) uint8 images."""
    out = np.empty(images.shape[:3], dtype=np.uint8)
    for rows, logits in predict_logits(model, images, batch_size, device, precision, channels_last):
        out[rows] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
    return out


def validation_soft_iou(model: nn.Module, images: np.ndarray, labels: np.ndarray, num_classes: int,
                        batch_size: int, device: torch.device, precision: str, channels_last: bool,
                        group: int = 32) -> float:
    """The study's checkpoint metric: the soft IoU of every group of ``group`` (its batch size, 32) val images,
    averaged over groups. Forward passes use ``batch_size``; sums are gathered per group."""
    scores = []
    for start in range(0, len(images), group):
        stop = min(start + group, len(images))
        sums = None
        for rows, logits in predict_logits(model, images[start:stop], batch_size, device, precision, channels_last):
            target = torch.from_numpy(labels[start + rows.start:start + rows.stop].astype(np.int64)).to(device)
            part = soft_iou_sums(torch.softmax(logits, dim=1), target, num_classes)
            sums = part if sums is None else [a + b for a, b in zip(sums, part)]
        intersection, total_y, total_p = sums
        scores.append(float((intersection / (total_y + total_p - intersection).clamp_min(1e-12)).mean()))
    return float(np.mean(scores)) if scores else float("nan")
