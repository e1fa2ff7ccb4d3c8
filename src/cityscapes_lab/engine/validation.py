"""Validation measures of the training loop: each judges a model on held-out data and returns named figures."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.prepared import SplitArrays
from ..metrics.official import ConfusionMatrix, official_scores
from ..metrics.paper import soft_iou_sums
from ..labels import NUM_TRAIN_CLASSES
from .evaluate import cropped, label_ids_of
from .inference import InferenceProtocol, predict_logits, predicted_chunks
from .losses import pixel_cross_entropy
from .runtime import Runtime
from .sources import EvalNetBatches
from .steps import evalnet_loss_terms, evalnet_outputs


def validation_soft_iou(model: nn.Module, images: np.ndarray, labels: np.ndarray, num_classes: int,
                        runtime: Runtime, group: int = 32) -> float:
    """The study's checkpoint metric: the soft IoU of every group of ``group`` (its batch size, 32) val images,
    averaged over groups. Forward passes use ``runtime.eval_batch_size``; sums are gathered per group."""
    scores = []
    for start in range(0, len(images), group):
        stop = min(start + group, len(images))
        sums = None
        for rows, logits in predict_logits(model, images[start:stop], runtime):
            target = torch.from_numpy(np.asarray(labels[start + rows.start:start + rows.stop]).astype(np.int64))
            part = soft_iou_sums(torch.softmax(logits, dim=1), target.to(runtime.device), num_classes)
            sums = part if sums is None else [a + b for a, b in zip(sums, part)]
        intersection, total_y, total_p = sums
        scores.append(float((intersection / (total_y + total_p - intersection).clamp_min(1e-12)).mean()))
    return float(np.mean(scores)) if scores else float("nan")


def official_miou(model: nn.Module, split: SplitArrays, protocol: str, runtime: Runtime,
                  rule: InferenceProtocol | None = None, num_classes: int = NUM_TRAIN_CLASSES) -> float:
    """The official 19-class mIoU of a split, predicted and counted a chunk of images at a time, on whole images
    or under an evaluation ``rule`` (sliding windows, centre crop: ``engine.prediction.PROTOCOLS``); under DDP
    each process predicts its share and the counts are summed."""
    mine = np.arange(runtime.rank, len(split), runtime.world_size)
    images = split.images
    if runtime.world_size > 1:
        images = images.subset(mine) if hasattr(images, "subset") else images[mine]
    labels = split.labels if rule is None else cropped(split, rule).labels
    confusion = ConfusionMatrix()
    for rows, predicted in predicted_chunks(model, images, runtime, rule, num_classes):
        confusion.add(label_ids_of(predicted, protocol), label_ids_of(np.asarray(labels[mine[rows]]), protocol))
    return official_scores(confusion.all_reduce()).miou


@torch.no_grad()
def mean_cross_entropy(model: nn.Module, split: SplitArrays, runtime: Runtime,
                       ignore_index: int | None = None) -> float:
    """Mean cross-entropy on a split's images, in inference mode."""
    total, count = 0.0, 0
    for rows, logits in predict_logits(model, split.images, runtime):
        target = torch.from_numpy(np.asarray(split.labels[rows]).astype(np.int64)).to(runtime.device)
        total += float(pixel_cross_entropy(logits, target, ignore_index)) * (rows.stop - rows.start)
        count += rows.stop - rows.start
    return total / max(1, count)


@torch.no_grad()
def evalnet_figures(model: nn.Module, rows, runtime: Runtime) -> dict[str, float]:
    """An EvalNet's validation figures: total, IoU and detection losses, IoU mean absolute error, detection
    accuracy."""
    model.eval()
    source = EvalNetBatches(rows)
    sums = dict(iou_loss=0.0, detection_loss=0.0, iou_mae=0.0, detection_accuracy=0.0)
    for start in range(0, len(rows), runtime.eval_batch_size):
        indices = np.arange(start, min(start + runtime.eval_batch_size, len(rows)))
        batch = source.batch(indices, 0, runtime)
        predicted_iou, predicted_detection = predicted = evalnet_outputs(model, batch, runtime)
        iou_loss, detection_loss = evalnet_loss_terms(predicted, batch)
        sums["iou_loss"] += float(iou_loss) * len(indices)
        sums["detection_loss"] += float(detection_loss) * len(indices)
        sums["iou_mae"] += float((predicted_iou - batch[2]).abs().mean()) * len(indices)
        sums["detection_accuracy"] += float(((predicted_detection >= 0.5) == (batch[3] >= 0.5)).float()
                                            .mean()) * len(indices)
    result = {name: value / max(1, len(rows)) for name, value in sums.items()}
    result["total_loss"] = result["iou_loss"] + result["detection_loss"]
    return result
