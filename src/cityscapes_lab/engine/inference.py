"""Inference: predictions of in-memory image arrays (``predict``), and the evaluation protocols of the model zoo:
whole image, sliding window, and multi-scale with flip.

Each protocol is data (``InferenceProtocol``); ``infer`` applies it to one batch and returns a score map at the
input's resolution whose argmax is the prediction. Two ways of combining scales and flips are provided because the
published numbers use them:

* ``softmax`` (mmsegmentation, InternImage): per scale and flip, logits resized to the original size, softmax;
  the mean of those probabilities.
* ``hrnet`` (HRNet-OCR's own code): per scale, exp(logits + flipped logits) at that scale, resized to the original
  size and summed over scales. For a single scale without flip both reduce to the logits' argmax.

Sliding windows follow mmsegmentation: windows of ``crop`` every ``stride``, the last one shifted back to end at
the border, overlapping scores averaged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .runtime import Runtime
from .sources import to_batch

@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, runtime: Runtime) -> Iterator[tuple[slice, torch.Tensor]]:
    """Logits (B, C, H, W) float32 of consecutive batches of ``runtime.eval_batch_size`` (N, H, W, 3) uint8
    images, in eval mode, with the slice of images they cover."""
    model.eval()
    for start in range(0, len(images), runtime.eval_batch_size):
        rows = slice(start, min(start + runtime.eval_batch_size, len(images)))
        x, _ = to_batch(images, None, np.arange(rows.start, rows.stop), runtime)
        with runtime.autocast():
            logits = model(x)
        yield rows, logits.float()


def predict(model: nn.Module, images: np.ndarray, runtime: Runtime) -> np.ndarray:
    """Predicted class indices (N, H, W) uint8 of (N, H, W, 3) uint8 images."""
    out = np.empty(images.shape[:3], dtype=np.uint8)
    for rows, logits in predict_logits(model, images, runtime):
        out[rows] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
    return out


MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass(frozen=True)
class InferenceProtocol:
    mode: str = "whole"  # whole | slide
    crop: tuple[int, int] | None = None  # sliding window (height, width)
    stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    combine: str = "softmax"  # softmax | hrnet
    slide_above: float | None = None  # mode whole: slide at scales above this (HRNet-OCR's ms protocol)
    align_corners: bool = False  # how images and scores are resized (the model's own convention)


def _resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def window_positions(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """(start, stop) of the windows along one side: every ``stride``, the last shifted back to the border."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    positions = []
    for index in range(count):
        stop = min(index * stride + crop, length)
        positions.append((max(stop - crop, 0), stop))
    return positions


def slide(score_fn, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int], channels: int) -> torch.Tensor:
    """Scores of ``score_fn`` over sliding windows of x (N, 3, H, W), averaged where windows overlap."""
    n, _, height, width = x.shape
    total = x.new_zeros((n, channels, height, width), dtype=torch.float32)
    count = x.new_zeros((1, 1, height, width), dtype=torch.float32)
    for y1, y2 in window_positions(height, crop[0], stride[0]):
        for x1, x2 in window_positions(width, crop[1], stride[1]):
            total[:, :, y1:y2, x1:x2] += score_fn(x[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


@torch.no_grad()
def infer(model: nn.Module, images: torch.Tensor, protocol: InferenceProtocol, num_classes: int,
          runtime: Runtime | None = None) -> torch.Tensor:
    """Score map (N, C, H, W) float32 for images (N, 3, H, W) float in [0, 1]; its argmax is the prediction.
    Forward passes run in the runtime's precision (fp32 without one)."""
    height, width = images.shape[-2:]
    runtime = runtime or Runtime(images.device)

    def logits(x: torch.Tensor) -> torch.Tensor:
        with runtime.autocast():
            return model(x).float()

    def flipped_sum(x: torch.Tensor) -> torch.Tensor:  # HRNet: logits + un-flipped logits of the flipped input
        out = logits(x)
        return out + logits(x.flip(-1)).flip(-1) if protocol.flip else out

    total = images.new_zeros((images.shape[0], num_classes, height, width), dtype=torch.float32)
    parts = 0
    for scale in protocol.scales:
        size = (int(height * scale + 0.5), int(width * scale + 0.5))
        x = _resize(images, size, protocol.align_corners)
        sliding = protocol.mode == "slide" or (protocol.slide_above is not None and scale > protocol.slide_above)
        crop = protocol.crop or size
        stride = protocol.stride or crop
        if protocol.combine == "hrnet":
            score_fn = lambda crop_x: torch.exp(flipped_sum(crop_x))  # noqa: E731
            score = slide(score_fn, x, crop, stride, num_classes) if sliding else score_fn(x)
            total += _resize(score, (height, width), protocol.align_corners)
            parts = 1
            continue
        for flipped in ((False, True) if protocol.flip else (False,)):
            view = x.flip(-1) if flipped else x
            score = slide(logits, view, crop, stride, num_classes) if sliding else logits(view)
            score = score.flip(-1) if flipped else score
            total += torch.softmax(_resize(score, (height, width), protocol.align_corners), dim=1)
            parts += 1
    return total / parts
