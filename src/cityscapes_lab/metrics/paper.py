"""The Inconsistency-Masks study's metrics (paper-protocol notes 3 and 2.2).

* Per image, pixel accuracy over all pixels (every index counts, 0 included), and IoU averaged over the classes
  present in that image's ground truth: IoU_c = |gt=c and pred=c| / (|gt=c or pred=c| + 1e-7). Classes that are
  only predicted lower the IoU of present classes through the union but are not averaged themselves.
* mPA and mIoU: unweighted means over images. (The study rounds per-image values to 4 decimals and means to 3;
  we keep full precision and round only for display.)
* The training-time checkpoint metric: a soft IoU on softmax probabilities over all classes of a batch,
  sum(y*p) / (sum(y) + sum(p) - sum(y*p)) per class, averaged over all classes (absent ones count about 0),
  then over batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where the tensor metrics run, not by every user of this module
    import torch


@dataclass(frozen=True)
class PaperScores:
    """Per-image scores (arrays of length N) and their means."""

    pixel_accuracy: np.ndarray
    iou: np.ndarray

    @property
    def mpa(self) -> float:
        return float(self.pixel_accuracy.mean()) if len(self.pixel_accuracy) else float("nan")

    @property
    def miou(self) -> float:
        return float(self.iou.mean()) if len(self.iou) else float("nan")


def image_scores(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[float, float]:
    """(pixel accuracy, mIoU over present classes) of one image: two (H, W) integer arrays."""
    pred, gt = prediction.ravel().astype(np.int64), target.ravel().astype(np.int64)
    intersection = np.bincount(gt[pred == gt], minlength=num_classes)
    union = np.bincount(gt, minlength=num_classes) + np.bincount(pred, minlength=num_classes) - intersection
    present = np.bincount(gt, minlength=num_classes) > 0
    iou = intersection[present] / (union[present] + 1e-7)
    return float((pred == gt).mean()), float(iou.mean())


def paper_scores(predictions: np.ndarray, targets: np.ndarray, num_classes: int) -> PaperScores:
    """The study's per-image scores for (N, H, W) predictions and ground truth."""
    pairs = [image_scores(p, t, num_classes) for p, t in zip(predictions, targets)]
    pa = np.array([p for p, _ in pairs], dtype=np.float64)
    iou = np.array([i for _, i in pairs], dtype=np.float64)
    return PaperScores(pa, iou)


def soft_iou_sums(probabilities: torch.Tensor, target: torch.Tensor, num_classes: int
                  ) -> list[torch.Tensor]:
    """Per-class sums (sum(y*p), sum(y), sum(p)) of a batch: probabilities (N, C, H, W), target (N, H, W)."""
    import torch

    p = probabilities.float()
    flat = target.reshape(-1)
    intersection = torch.zeros(num_classes, dtype=p.dtype, device=p.device)
    intersection.index_add_(0, flat, p.gather(1, target.unsqueeze(1)).reshape(-1))
    total_y = torch.bincount(flat, minlength=num_classes)[:num_classes].to(p.dtype)
    return [intersection, total_y, p.sum(dim=(0, 2, 3))]


def soft_iou(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The study's checkpoint metric for one batch: probabilities (N, C, H, W) softmax output, target (N, H, W)
    class indices; returns the mean over all C classes of sum(y*p) / (sum(y) + sum(p) - sum(y*p))."""
    intersection, total_y, total_p = soft_iou_sums(probabilities, target, probabilities.shape[1])
    return (intersection / (total_y + total_p - intersection).clamp_min(1e-12)).mean()
