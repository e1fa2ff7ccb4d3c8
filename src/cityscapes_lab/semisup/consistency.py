"""Consistency-loss fine-tuning (notes 5.3): LDT's best model alternates a supervised pass over the labeled images
with a pass over the unlabeled ones that pulls the softmax of two independent photometric views together.

Fixed against the original: both views are RGB, as the labeled images are (the original fed the unlabeled
images in OpenCV's BGR order, notes 8.6). Kept: the checkpoint with the lowest validation cross-entropy
(checked after each of the two passes), the study's AdamW and learning rate, 100 epochs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data.augment import AugmentParams, augment_photometric
from ..data.prepared import SplitArrays
from ..engine.checkpoint import load_checkpoint, save_checkpoint
from ..engine.loop import BatchStream, TrainingDiverged, autocast, predict_logits, resolve_precision, to_batch
from ..engine.losses import pixel_cross_entropy
from ..engine.optim import DecoupledAdamW
from ..study.keys import derive_seed

#: strength (the approach's n) -> photometric augmentation of the two views (notes 5.3: low, mid, high)
STRENGTHS: dict[int, AugmentParams] = {
    1: AugmentParams((0.95, 1.05), (-3.0, 3.0), max_blur=0, max_noise=3),
    2: AugmentParams((0.8, 1.2), (-9.0, 9.0), max_blur=0, max_noise=9),
    3: AugmentParams((0.6, 1.4), (-15.0, 15.0), max_blur=1, max_noise=15),
}


def consistency_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean over images, pixels and classes of the squared difference of the two views' softmax outputs."""
    return (torch.softmax(logits_a.float(), dim=1) - torch.softmax(logits_b.float(), dim=1)).pow(2).mean()


def two_views(images: np.ndarray, ids: list[str], params: AugmentParams, seed: int, step: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Two independent photometric views of every (H, W, 3) RGB image of a batch."""
    views_a, views_b = np.empty_like(images), np.empty_like(images)
    for i, image_id in enumerate(ids):
        rng = np.random.default_rng(derive_seed(seed, "views", step, image_id))
        views_a[i] = augment_photometric(images[i], params, rng)
        views_b[i] = augment_photometric(images[i], params, rng)
    return views_a, views_b


@torch.no_grad()
def validation_loss(model: nn.Module, val: SplitArrays, config: TrainConfig, device: torch.device,
                    precision: str) -> float:
    """Mean cross-entropy on the validation images, in inference mode."""
    total, count = 0.0, 0
    for rows, logits in predict_logits(model, val.images, config.eval_batch_size, device, precision,
                                       config.channels_last):
        target = torch.from_numpy(np.asarray(val.labels[rows]).astype(np.int64)).to(device)
        total += float(pixel_cross_entropy(logits, target)) * (rows.stop - rows.start)
        count += rows.stop - rows.start
    return total / max(1, count)


def fine_tune(model: nn.Module, labeled: SplitArrays, unlabeled: SplitArrays, val: SplitArrays,
              params: AugmentParams, config: TrainConfig, epochs: int, seed: int, checkpoint: Path,
              device: torch.device) -> tuple[dict, float, int, int]:
    """Consistency-loss fine-tuning with a checkpoint after every epoch (resumed when present). Returns (best
    weights, best validation loss, best epoch, epochs run)."""
    precision = resolve_precision(config.precision, device)
    model.to(device).to(memory_format=torch.channels_last)
    optimizer = DecoupledAdamW(model.parameters(), lr=config.lr, decay=config.weight_decay, eps=config.adam_eps,
                               keras_epsilon=True)  # the study's Keras optimizer
    labeled_stream = BatchStream(len(labeled), config.batch_size, derive_seed(seed, "labeled"))
    unlabeled_stream = BatchStream(len(unlabeled), config.batch_size, derive_seed(seed, "unlabeled"))
    epoch, best_loss, best_epoch, best_state = 0, math.inf, -1, None
    if checkpoint.exists():
        saved = load_checkpoint(checkpoint, map_location=device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        epoch, best_loss, best_epoch, best_state = (saved["epoch"], saved["best_loss"], saved["best_epoch"],
                                                    saved["best_state"])

    def keep_if_better() -> None:
        nonlocal best_loss, best_epoch, best_state
        loss = validation_loss(model, val, config, device, precision)
        if loss < best_loss:
            best_loss, best_epoch = loss, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def step(loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the consistency fine-tuning loss became {float(loss)} in epoch {epoch + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    while epoch < epochs:
        model.train()
        for s in range(epoch * labeled_stream.batches_per_pass, (epoch + 1) * labeled_stream.batches_per_pass):
            x, y = to_batch(labeled.images, labeled.labels, labeled_stream.batch(s), device, config.channels_last)
            with autocast(precision, device):
                logits = model(x)
            step(pixel_cross_entropy(logits.float(), y))
        keep_if_better()
        model.train()
        for s in range(epoch * unlabeled_stream.batches_per_pass, (epoch + 1) * unlabeled_stream.batches_per_pass):
            indices = unlabeled_stream.batch(s)
            views = two_views(np.asarray(unlabeled.images[indices]), [unlabeled.ids[i] for i in indices], params,
                              seed, s)
            a, b = (torch.from_numpy(v).permute(0, 3, 1, 2).to(device) for v in views)
            with autocast(precision, device):
                logits_a, logits_b = model(a), model(b)
            step(consistency_loss(logits_a, logits_b))
        keep_if_better()
        epoch += 1
        save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "epoch": epoch, "best_loss": best_loss, "best_epoch": best_epoch,
                                     "best_state": best_state})
    return best_state, best_loss, best_epoch, epoch
