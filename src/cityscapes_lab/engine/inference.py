"""Inference: predictions of in-memory image arrays (``predict``), and the evaluation protocols of the model zoo:
whole image, sliding window, and multi-scale with flip.

Each protocol is data (``InferenceProtocol``); ``infer`` applies it to a batch of (N, H, W, 3) uint8 RGB images and
returns a score map at their resolution whose argmax is the prediction. The models normalise what they are given
(uint8, or float in [0, 1]), so the protocol resizes images as the official test code does, with OpenCV's bilinear
(``cv2.INTER_LINEAR``, half-pixel centres); scores go back to H x W with bilinear ``F.interpolate`` at the model's
``align_corners``. The two rules of the published multi-scale + flip numbers, in their code's order:

* ``softmax`` (mmsegmentation 0.x, InternImage: ``MultiScaleFlipAug`` + ``Resize(keep_ratio=True)``, then
  ``EncoderDecoder.aug_test``): at ratio r the uint8 image is resized to the largest size within
  (int(W r), int(H r)): factor f = min(max of those / max(H, W), min of those / min(H, W)), sides int(side f + 0.5)
  (mmcv ``rescale_size``); that view and its horizontal flip each give logits (whole, or windows averaged),
  resized to H x W, softmax, flipped back; the result is the mean over all scale and flip views.
* ``hrnet`` (HRNet-OCR's ``Cityscapes.multi_scale_inference`` and ``BaseDataset.inference``): at scale r the float
  image is resized so that its long side is int(L r + 0.5) and the other int(side * long / L + 0.5); above
  ``slide_above`` it is cut into windows of ``crop`` every ``stride`` (no padding); each window (or the whole
  image) gives exp((logits + un-flipped logits of the flipped input) * 0.5) (exp(logits) without flip); windows
  averaged, resized to H x W, summed over scales.

Scales are taken from the image itself: (W, H) for mmseg (its ``img_scale=None`` mode), L = the long side for HRNet,
which on Cityscapes' 2048x1024 are the official ``img_scale=(2048, 1024)`` and ``base_size=2048``. For a single
scale without flip both reduce to the logits' argmax ("whole" and "slide" return their softmax).

Sliding windows follow mmsegmentation (HRNet-OCR's Cityscapes code places them the same way): windows of ``crop``
every ``stride``, the last one shifted back to end at the border, overlapping scores averaged.

The semi-supervised community's rules (DeepLabV3+ on the 500 val images at 1024x2048; a number is comparable only
to one made under the same rule), all single scale, no flip, fp32 in the official code:

* ``slide-unimatch-v1`` (UniMatch V1, ``evaluate`` in ``supervised.py``, mode ``sliding_window``): square windows
  of ``crop_size`` = 801 starting at every multiple of the stride int(801 * 2 / 3) = 534 below the side (rows 0,
  534; columns 0, 534, 1068, 1602), edge windows truncated at the border (534:1024, 1602:2048: the model sees
  smaller inputs); each window's logits go through softmax and are summed where windows overlap, not divided by
  the counts (the argmax is the same either way). ``edge="truncate"``, ``combine="unimatch"``, ``overlap="sum"``.
* ``slide-shifted`` (UniMatch V2's ``evaluate``, window 798 and stride 532 for its DINOv2 models): as V1, but the
  last window is shifted back to end at the border, so every window is full size (mmseg's placement); softmax per
  window, summed. ``edge="shift"``, ``combine="unimatch"``, ``overlap="sum"``; by name with V1's 801 / 534 (the
  DeepLabV3+ window) unless given another (``protocol_for(..., window=798)``). mmseg's ``slide`` places windows
  the same way but averages their logits (softmax after).
* ``center-crop`` (U2PL's in-training ``validate``: its val loader's ``Crop(type="center")``, 769x769): the
  whole-image forward pass of the centre crop at offsets ((H - 769) // 2, (W - 769) // 2) = (127, 639) only, and
  only those pixels are scored: ``score_crop``; ``InferenceProtocol.scored`` crops the labels the same way.
  (U2PL's final ``eval.py`` is ``slide`` with windows of 769 every ceil(769 * 2 / 3) = 513, logits averaged.)

An image side smaller than the window gets one window of the whole side (mmseg; UniMatch's code does not reach
that case on Cityscapes); an image smaller than ``score_crop`` is refused (U2PL would pad it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DataError
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


def predict_with(model: nn.Module, images: np.ndarray, protocol: InferenceProtocol, num_classes: int,
                 runtime: Runtime) -> np.ndarray:
    """Predicted classes (N, h, w) uint8 of (N, H, W, 3) uint8 images under an evaluation rule (``infer``; h x w:
    the rule's scored region), ``runtime.eval_batch_size`` images at a time, or one at a time for sliding windows
    (each holds a full-size score map)."""
    model.eval()
    region = protocol.region(*images.shape[1:3])
    out = np.empty((len(images), region[0].stop - region[0].start, region[1].stop - region[1].start), np.uint8)
    batch = 1 if protocol.mode == "slide" else runtime.eval_batch_size
    for start in range(0, len(images), batch):
        rows = slice(start, min(start + batch, len(images)))
        scores = infer(model, np.asarray(images[rows]), protocol, num_classes, runtime)
        out[rows] = scores.argmax(dim=1).to(torch.uint8).cpu().numpy()
    return out


def predicted_chunks(model: nn.Module, images: np.ndarray, runtime: Runtime, protocol: InferenceProtocol | None = None,
                     num_classes: int = 0, chunk: int = 64) -> Iterator[tuple[slice, np.ndarray]]:
    """Predicted classes of consecutive chunks of at most ``chunk`` images with the slice of images they cover:
    ``predict`` or, with a protocol, ``predict_with``. A caller that scores or writes each chunk then holds one
    chunk of images and predictions at a time, whatever the size of the split."""
    for start in range(0, len(images), chunk):
        rows = slice(start, min(start + chunk, len(images)))
        block = np.asarray(images[rows])
        if protocol is None:
            yield rows, predict(model, block, runtime)
        else:
            yield rows, predict_with(model, block, protocol, num_classes, runtime)


Scores = Callable[[torch.Tensor], torch.Tensor]
Windowed = Callable[[Scores, torch.Tensor], torch.Tensor]  # scores of a view: whole, or windows averaged


@dataclass(frozen=True)
class InferenceProtocol:
    mode: str = "whole"  # whole | slide
    crop: tuple[int, int] | None = None  # sliding window (height, width)
    stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    combine: str = "softmax"  # softmax (mmseg) | hrnet | unimatch: the keys of RULES
    slide_above: float | None = None  # mode whole: slide at scales above this (HRNet-OCR's ms protocol)
    align_corners: bool = False  # how scores are resized back to the input (the model's own convention)
    edge: str = "shift"  # the last window: shifted back to end at the border (mmseg, UniMatch V2) | truncate (V1)
    overlap: str = "mean"  # where windows overlap their scores are averaged (mmseg, HRNet) | summed (UniMatch)
    score_crop: tuple[int, int] | None = None  # (height, width): only the centre crop is predicted and scored (U2PL)

    def __post_init__(self) -> None:
        if self.edge not in ("shift", "truncate") or self.overlap not in ("mean", "sum") or self.combine not in RULES:
            raise ValueError(f"unknown edge {self.edge!r}, overlap {self.overlap!r} or combine {self.combine!r}")

    def pixels(self, height: int, width: int) -> int:
        """The pixels the network's forward passes cover for one height x width image (what predicting it costs,
        for the plan): its centre crop, or at every scale the whole image or its windows, twice with flips."""
        if self.score_crop is not None:
            return self.score_crop[0] * self.score_crop[1]
        total = 0
        for scale in self.scales:
            h, w = RULES[self.combine].size(height, width, scale)  # as ``infer`` resizes
            if self.mode == "slide" or (self.slide_above is not None and scale > self.slide_above):
                rows = window_positions(h, self.crop[0], self.stride[0], self.edge)
                columns = window_positions(w, self.crop[1], self.stride[1], self.edge)
                total += sum(b - a for a, b in rows) * sum(b - a for a, b in columns)
            else:
                total += h * w
        return total * (2 if self.flip else 1)

    def region(self, height: int, width: int) -> tuple[slice, slice]:
        """The rows and columns of an H x W image that this protocol predicts and scores: all of them, or the centre
        crop at U2PL's offsets ((H - h) // 2, (W - w) // 2)."""
        if self.score_crop is None:
            return slice(0, height), slice(0, width)
        (h, w) = self.score_crop
        if h > height or w > width:
            raise DataError(f"a {height}x{width} image is smaller than the {h}x{w} centre crop of this protocol")
        top, left = (height - h) // 2, (width - w) // 2
        return slice(top, top + h), slice(left, left + w)

    def scored(self, array: np.ndarray) -> np.ndarray:
        """The scored pixels of an (H, W, ...) array: an image, its labels or its predictions alike, so that
        predictions and ground truth always cover the same crop."""
        return array[self.region(*array.shape[:2])]


def hrnet_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(H, W) at a scale as HRNet-OCR's ``multi_scale_aug``: the long side int(long * scale + 0.5), the other in
    proportion, rounded half up."""
    long = int(max(height, width) * scale + 0.5)
    if height > width:
        return long, int(width * long / height + 0.5)
    return int(height * long / width + 0.5), long


def mmseg_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(H, W) at a ratio as mmseg's ``MultiScaleFlipAug`` (bound (int(W * ratio), int(H * ratio))) and
    ``Resize(keep_ratio=True)`` (mmcv ``rescale_size``: the largest size within the bound, sides rounded)."""
    bound = (int(width * scale), int(height * scale))
    factor = min(max(bound) / max(height, width), min(bound) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _hrnet_views(logits: Scores, scores: Windowed, back: Scores, x: torch.Tensor,
                 flip: bool) -> Iterator[torch.Tensor]:
    """One map per scale: exp of the mean of a window's logits and its flipped twin's, windows averaged, resized
    back (exp before the resize and the window average, as ``BaseDataset.inference`` returns ``pred.exp()``)."""
    def window(crop: torch.Tensor) -> torch.Tensor:
        out = logits(crop)
        return ((out + logits(crop.flip(-1)).flip(-1)) * 0.5 if flip else out).exp()

    yield back(scores(window, x))


def _each_flip(view: Scores, x: torch.Tensor, flip: bool) -> Iterator[torch.Tensor]:
    """The map of x, then (with flip) the map of the flipped x flipped back."""
    yield view(x)
    if flip:
        yield view(x.flip(-1)).flip(-1)


def _mmseg_views(logits: Scores, scores: Windowed, back: Scores, x: torch.Tensor,
                 flip: bool) -> Iterator[torch.Tensor]:
    """One map per view: logits resized back, softmax, then flipped back (``EncoderDecoder.inference``)."""
    yield from _each_flip(lambda view: torch.softmax(back(scores(logits, view)), dim=1), x, flip)


def _unimatch_views(logits: Scores, scores: Windowed, back: Scores, x: torch.Tensor,
                    flip: bool) -> Iterator[torch.Tensor]:
    """One map per view: the softmax of every window's logits, before windows are combined (UniMatch's
    ``evaluate`` adds ``pred.softmax(dim=1)`` window by window)."""
    def window(crop: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits(crop), dim=1)

    yield from _each_flip(lambda view: back(scores(window, view)), x, flip)


@dataclass(frozen=True)
class CombineRule:
    """How one published protocol resizes an image to a scale and turns its views into score maps."""

    size: Callable[[int, int, float], tuple[int, int]]  # (H, W) of an image at a scale
    floats: bool  # OpenCV resizes the float image in [0, 1] (HRNet: its normalised floats), else the uint8 one
    views: Callable[..., Iterator[torch.Tensor]]  # the score maps of one scale, at the input's size
    mean: bool  # the result: the mean of all maps (mmseg), else their sum (HRNet)


RULES = {"softmax": CombineRule(mmseg_size, False, _mmseg_views, True),
         "hrnet": CombineRule(hrnet_size, True, _hrnet_views, False),
         "unimatch": CombineRule(mmseg_size, False, _unimatch_views, True)}  # single scale in its code


def _resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) images resized to (H', W') with ``cv2.INTER_LINEAR``, in their dtype (uint8 rounds)."""
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    return np.stack([cv2.resize(np.ascontiguousarray(image), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                     for image in images])


def unimatch_stride(window: int) -> int:
    """UniMatch's stride for a window: ``int(grid * 2 / 3)`` (801 -> 534, 798 -> 532)."""
    return int(window * 2 / 3)


def window_positions(length: int, crop: int, stride: int, edge: str = "shift") -> list[tuple[int, int]]:
    """(start, stop) of the windows along one side, every ``stride``: "shift" (mmseg, UniMatch V2) as many as cover
    the side, the last shifted back to end at the border; "truncate" (UniMatch V1) one at every multiple of the
    stride below the side, cut off at the border."""
    if edge == "truncate":
        return [(start, min(start + crop, length)) for start in range(0, length, stride)]
    count = max(length - crop + stride - 1, 0) // stride + 1
    positions = []
    for index in range(count):
        stop = min(index * stride + crop, length)
        positions.append((max(stop - crop, 0), stop))
    return positions


Window = tuple[int, int, int, int]  # y1, y2, x1, x2


def window_passes(rows: list[tuple[int, int]], columns: list[tuple[int, int]],
                  pixels: int | None) -> list[list[Window]]:
    """The windows in raster order, cut into forward passes: runs of consecutive windows of one shape holding at
    most ``pixels`` pixels (at least one window; None: one window per pass). Taking the windows in their order
    keeps the sums where they overlap in the official code's order, so the scores do not depend on the grouping
    beyond the network's own batch arithmetic."""
    passes: list[list[Window]] = []
    for y1, y2 in rows:
        for x1, x2 in columns:
            shape = (y2 - y1, x2 - x1)
            last = passes[-1] if passes else []
            same = bool(last) and (last[0][1] - last[0][0], last[0][3] - last[0][2]) == shape
            if same and pixels is not None and (len(last) + 1) * shape[0] * shape[1] <= pixels:
                last.append((y1, y2, x1, x2))
            else:
                passes.append([(y1, y2, x1, x2)])
    return passes


def slide(score_fn: Scores, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int], channels: int,
          edge: str = "shift", mean: bool = True, pass_pixels: int | None = None) -> torch.Tensor:
    """Scores of ``score_fn`` over sliding windows of x (N, 3, H, W) placed by ``edge``, averaged where windows
    overlap (else summed). Windows of one shape go through ``score_fn`` together, up to ``pass_pixels`` pixels
    per image and pass (``window_passes``; None: one at a time)."""
    n, _, height, width = x.shape
    total = x.new_zeros((n, channels, height, width), dtype=torch.float32)
    count = x.new_zeros((1, 1, height, width), dtype=torch.float32)
    rows = window_positions(height, crop[0], stride[0], edge)
    columns = window_positions(width, crop[1], stride[1], edge)
    for windows in window_passes(rows, columns, pass_pixels):
        crops = [x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in windows]
        scores = score_fn(crops[0] if len(crops) == 1 else torch.cat(crops))  # one window: no copy
        for index, (y1, y2, x1, x2) in enumerate(windows):
            total[:, :, y1:y2, x1:x2] += scores[index * n:(index + 1) * n]
            count[:, :, y1:y2, x1:x2] += 1
    return total / count if mean else total


@torch.no_grad()
def infer(model: nn.Module, images: np.ndarray, protocol: InferenceProtocol, num_classes: int,
          runtime: Runtime | None = None) -> torch.Tensor:
    """Score map (N, C, H, W) float32 of images (N, H, W, 3) uint8 RGB (of their ``protocol.region`` with a
    ``score_crop``); its argmax is the prediction. Forward passes run in the runtime's precision (fp32 on the CPU,
    NCHW, without one). With ``runtime.batch_windows`` (by default on a GPU) sliding windows of one shape share a
    pass, as many as hold the pixels of the unscaled image, so a pass never holds more than the whole-image
    rule's."""
    runtime = runtime or Runtime(torch.device("cpu"), channels_last=False)
    rule = RULES[protocol.combine]
    images = images[(slice(None), *protocol.region(*images.shape[1:3]))]
    n, height, width = images.shape[:3]
    # the model normalises either (a float32 x / 255 is what it computes from uint8 x)
    pixels = images.astype(np.float32) / 255 if rule.floats else images

    def logits(x: torch.Tensor) -> torch.Tensor:
        with runtime.autocast():
            return model(x).float()

    # windows of one shape share a pass holding at most the whole image's pixels (what the whole-image rule
    # holds), or go one at a time
    batched = runtime.device.type == "cuda" if runtime.batch_windows is None else runtime.batch_windows
    budget = height * width if batched else None
    total = torch.zeros((n, num_classes, height, width), device=runtime.device)
    views = 0
    for scale in protocol.scales:
        size = rule.size(height, width, scale)
        x, _ = to_batch(resize_images(pixels, size), None, np.arange(n), runtime)
        sliding = protocol.mode == "slide" or (protocol.slide_above is not None and scale > protocol.slide_above)
        crop = protocol.crop or size
        stride = protocol.stride or crop

        def scores(fn: Scores, view: torch.Tensor) -> torch.Tensor:
            if not sliding:
                return fn(view)
            return slide(fn, view, crop, stride, num_classes, protocol.edge, protocol.overlap == "mean", budget)

        def back(score: torch.Tensor) -> torch.Tensor:
            return _resize(score, (height, width), protocol.align_corners)

        for score in rule.views(logits, scores, back, x, protocol.flip):  # summed view by view, as the official code
            total += score
            views += 1
    return total / views if rule.mean else total
