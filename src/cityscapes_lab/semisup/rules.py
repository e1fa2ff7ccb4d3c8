"""The study's pseudo-labelling rules as pure functions on arrays (paper-protocol notes 4-5).

Nothing here reads files or runs a network: each function takes class maps, probabilities or images and returns
arrays, and each is checked on hand-made examples. Shapes: class maps (H, W) integer, stacks of them (n, H, W),
probabilities (n, C, H, W) float, images (H, W, 3) uint8 RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..data.augment import AugmentParams, augment, augment_photometric
from ..labels import PAPER_IM_INDEX


def inconsistency_mask(teacher_labels: np.ndarray, image: np.ndarray, erode: int = 0, dilate: int = 0,
                       block_input: bool = True, block_output: bool = True, fill: int | None = PAPER_IM_INDEX
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Inconsistency Mask (IM) rule: keep a pixel's label only where every teacher agrees.

    ``teacher_labels`` (n, H, W): the n teachers' predicted classes. The pseudo-label is the first teacher's
    class where all agree and ``fill`` where they do not: 0, the IM class of the paper protocol; 255, the
    standard protocol's ignore label (left out of the loss); None keeps the first teacher's class (nothing
    masked). ``mask`` (H, W) bool marks the disagreement. Optional morphology (the study disables it for
    Cityscapes): ``erode`` > 0 erodes the mask with a k x k kernel and grows every other class by a 3x3 dilation
    into the freed pixels (higher classes win); ``dilate`` > 0 then dilates the mask. ``block_input`` sets the
    image to 0 under the mask, ``block_output`` sets the label to ``fill`` there. Returns (pseudo_label uint8,
    mask bool, masked_image uint8).
    """
    label, mask = inconsistency_label(teacher_labels, erode, dilate, block_output, fill)
    return label, mask, blank_image(image, mask) if block_input else image.copy()


def inconsistency_label(teacher_labels: np.ndarray, erode: int = 0, dilate: int = 0, block_output: bool = True,
                        fill: int | None = PAPER_IM_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """The (pseudo_label, mask) of ``inconsistency_mask`` without the image: for callers that blank the image
    as it is read (``data.rows.BlankedRows``) or need only the masks."""
    first = teacher_labels[0]
    agree = np.all(teacher_labels == first, axis=0)
    label = first.astype(np.uint8) if fill is None else np.where(agree, first, fill).astype(np.uint8)
    mask = ~agree
    if erode > 0:
        mask = cv2.erode(mask.astype(np.uint8), np.ones((erode, erode), np.uint8)).astype(bool)
        if fill is not None:
            for value in np.unique(label[label != fill]):
                grown = cv2.dilate((label == value).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                label[grown] = value
    if dilate > 0:
        mask = cv2.dilate(mask.astype(np.uint8), np.ones((dilate, dilate), np.uint8)).astype(bool)
    if block_output and fill is not None:
        label[mask] = fill
    return label, mask


def blank_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """IM's blocked input: ``image`` (H, W, 3) with 0 wherever ``mask`` (H, W) is set."""
    return np.where(mask[..., None], 0, image).astype(np.uint8)


def ensemble_label(probabilities: np.ndarray) -> np.ndarray:
    """Soft voting (model ensemble, input ensemble): the class of the highest mean probability.
    probabilities (n, C, H, W) -> (H, W) uint8."""
    return probabilities.mean(axis=0).argmax(axis=0).astype(np.uint8)


def input_ensemble_inputs(image: np.ndarray, copies: int, params: AugmentParams, rng: np.random.Generator,
                          cumulative: bool = True) -> list[np.ndarray]:
    """The ``copies`` photometric variants of an image that the input ensemble predicts on.

    As the study (``cumulative=True``), each copy augments the previous copy, and the clean image is not among
    them (notes 5.5, 8.7); ``cumulative=False`` augments the clean image each time and adds it as the first input.
    """
    if cumulative:
        inputs, current = [], image
        for _ in range(copies):
            current = augment_photometric(current, params, rng)
            inputs.append(current)
        return inputs
    return [image] + [augment_photometric(image, params, rng) for _ in range(copies - 1)]


@dataclass(frozen=True)
class GenerationParams:
    """What changes with the generation for Noisy Student and the IM+ family (notes 4)."""

    alpha: float  # student width multiplier
    augment: AugmentParams


#: generation 0..4 -> student width and augmentation strength (notes 4: alpha 1 -> 2, noise 3 -> 15, ...)
GENERATION_SCHEDULE: tuple[GenerationParams, ...] = (
    GenerationParams(1.0, AugmentParams((0.95, 1.05), (-3.0, 3.0), max_blur=0, max_noise=3)),
    GenerationParams(1.25, AugmentParams((0.9, 1.1), (-6.0, 6.0), max_blur=0, max_noise=6)),
    GenerationParams(1.5, AugmentParams((0.8, 1.2), (-9.0, 9.0), max_blur=0, max_noise=9)),
    GenerationParams(1.75, AugmentParams((0.7, 1.3), (-12.0, 12.0), max_blur=0, max_noise=12)),
    GenerationParams(2.0, AugmentParams((0.6, 1.4), (-15.0, 15.0), max_blur=1, max_noise=15)),
)


def generation_params(generation: int) -> GenerationParams:
    """The schedule's entry for a generation (later generations keep the last entry)."""
    return GENERATION_SCHEDULE[min(generation, len(GENERATION_SCHEDULE) - 1)]


def augmented_copies(image: np.ndarray, label: np.ndarray, count: int, params: AugmentParams,
                     rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` independently augmented copies of an (image, label) pair."""
    return [augment(image, label, params, rng) for _ in range(count)]


def copies_for_score(score: float, low: float = 0.372, high: float = 0.453, most: int = 5) -> int:
    """IM++: how many augmented copies of a pseudo-labelled pair to train on, from its EvalNet score.

    Above ``high``: ``most`` copies; between the thresholds: 1 + floor((score - low) / step) with
    step = (high - low) / most, at most ``most``; otherwise 1 (no pair is ever discarded). The study's
    thresholds 0.372 and 0.453 are its ALDT and FDT *test* mIoU (notes 7, 8.4)."""
    if score > high:
        return most
    if score > low:
        return min(most, 1 + math.floor((score - low) / ((high - low) / most)))
    return 1


# --- EvalNet targets ------------------------------------------------------------------------------------------


def per_class_iou(candidate: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """IoU of a candidate label map against the ground truth for every class (NaN where a class is in neither)."""
    pred, gt = candidate.ravel().astype(np.int64), truth.ravel().astype(np.int64)
    intersection = np.bincount(gt[pred == gt], minlength=num_classes)
    union = np.bincount(gt, minlength=num_classes) + np.bincount(pred, minlength=num_classes) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / np.maximum(union, 1), np.nan)


def evalnet_targets(candidate: np.ndarray, truth: np.ndarray, num_classes: int, min_share: float = 0.01
                    ) -> tuple[np.ndarray, np.ndarray]:
    """What the EvalNet of the EvalNet approach learns for a candidate mask (notes 5.8, with its bugs fixed).

    IoU target: IoU(candidate, ground truth) for every class present in the ground truth, 0 for the others (the
    original swapped the arguments and used a stale image for its ground-truth rows). Detection target: 1 where
    the class covers more than ``min_share`` of the ground truth's pixels. Both (num_classes,) float32."""
    counts = np.bincount(truth.ravel(), minlength=num_classes)[:num_classes]
    iou = np.nan_to_num(per_class_iou(candidate, truth, num_classes)) * (counts > 0)
    detection = counts > min_share * truth.size
    return iou.astype(np.float32), detection.astype(np.float32)


def evalnet_im_targets(pseudo_label: np.ndarray, mask: np.ndarray, truth: np.ndarray, num_classes: int,
                       kept_share: float = 0.3, image_share: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """What the EvalNet of IM++ / AIM++ learns for an IM pair (notes 5.10, kept as the study defines it).

    IoU target: IoU(pseudo-label, ground truth) for classes present in the ground truth, 0 otherwise; class 0 is
    1 when the pseudo-label contains the IM class and the ground truth has no index 0 (else its real IoU).
    Detection target, on the ground truth with the masked pixels removed: class 0 is 1 if any 0 remains; a class
    c > 0 is 1 if at least ``kept_share`` of its pixels remain or the remaining pixels cover ``image_share`` of the
    image. Both (num_classes,) float32."""
    counts = np.bincount(truth.ravel(), minlength=num_classes)[:num_classes]
    iou = np.nan_to_num(per_class_iou(pseudo_label, truth, num_classes)) * (counts > 0)
    if (pseudo_label == PAPER_IM_INDEX).any() and counts[PAPER_IM_INDEX] == 0:
        iou[PAPER_IM_INDEX] = 1.0
    remaining = np.bincount(truth[~mask].ravel(), minlength=num_classes)[:num_classes]
    detection = np.zeros(num_classes, dtype=bool)
    detection[PAPER_IM_INDEX] = remaining[PAPER_IM_INDEX] > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(counts > 0, remaining / np.maximum(counts, 1), 0.0)
    others = np.arange(num_classes) != PAPER_IM_INDEX
    detection[others] = ((share >= kept_share) | (remaining >= image_share * truth.size))[others]
    return iou.astype(np.float32), detection.astype(np.float32)


def evalnet_score(iou: np.ndarray, detection: np.ndarray, classes: slice = slice(None)) -> float:
    """The score of a candidate from an EvalNet ensemble's mean outputs (each (num_classes,)): the mean
    predicted IoU over the classes (within ``classes``) whose mean detection is at least 0.5, or 0 if none.
    The EvalNet approach scores every class (0 included); IM++ scores classes 1.."""
    iou, detection = iou[classes], detection[classes]
    chosen = detection >= 0.5
    return float(iou[chosen].mean()) if chosen.any() else 0.0
