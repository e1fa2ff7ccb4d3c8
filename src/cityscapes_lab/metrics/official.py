"""The official Cityscapes pixel-level scores, equal to cityscapesscripts' evaluator, computed fast.

Pixels are counted in one confusion matrix: rows are the ground truth's evaluated class (its trainId, 0..18) or
C = 19 for every ignored label; columns are the prediction's evaluated class, C for an ignored label, or C+1 for
an ignored label that has instances (caravan, trailer: they still count for the vehicle category's iIoU). With c
an evaluated class, the evaluator's rules read:

* IoU_c  = TP / (TP + FP + FN), TP = pixels with gt c and prediction c, FN = pixels with gt c predicted as anything
  else (an ignored label included), FP = pixels predicted c whose gt is another *evaluated* class.
* iIoU_c = the same with TP and FN summed per ground-truth instance and weighted by
  ``average instance size of c / size of this instance``, so that small objects count as much as large ones.
* category scores: the same with the classes of a category merged (for iIoU, a category's predictions include
  its ignored instance labels).
* means are taken over the classes (categories) whose score is defined; an empty class gives NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..labels import (CATEGORY_NAMES, ID_TO_LABEL, LABELID_TO_TRAINID, NUM_LABEL_IDS, NUM_TRAIN_CLASSES,
                      TRAIN_CLASS_NAMES, TRAIN_LABELS, TRAINID_TO_CATEGORY)

C = NUM_TRAIN_CLASSES
COLUMNS = C + 2
FULL_IMAGE_AREA = 2048 * 1024


def _average_instance_sizes() -> np.ndarray:
    """The evaluator's per-class average instance size in pixels at 2048x1024 (its iIoU weights), by trainId;
    NaN for classes without instances. Read from cityscapesscripts itself, the source of the constants."""
    from cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling import args as evaluator_args

    sizes = np.full(C, np.nan)
    for train_id, label in enumerate(TRAIN_LABELS):
        if label.hasInstances:
            sizes[train_id] = evaluator_args.avgClassSize[label.name]
    return sizes


def _column_table() -> np.ndarray:
    """labelId -> confusion column: trainId, C for ignored labels, C+1 for ignored labels with instances."""
    table = np.full(256, C, dtype=np.int64)
    for label in ID_TO_LABEL.values():
        train_id = int(LABELID_TO_TRAINID[label.id])
        table[label.id] = train_id if train_id < C else (C + 1 if label.hasInstances else C)
    return table


def _instance_categories() -> np.ndarray:
    """labelId -> index of its category among CATEGORY_NAMES for labels with instances, else -1 (and -2 for
    values that are no labelId, so that they never match)."""
    table = np.full(256, -2, dtype=np.int64)
    for label in ID_TO_LABEL.values():
        table[label.id] = CATEGORY_NAMES.index(label.category) if label.hasInstances else -1
    return table


def _ignored_instance_category() -> str:
    """The one category whose ignored labels have instances (vehicle: caravan, trailer): column C+1."""
    names = {label.category for label in ID_TO_LABEL.values()
             if label.hasInstances and LABELID_TO_TRAINID[label.id] >= C}
    assert len(names) == 1, names
    return names.pop()


_COLUMN = _column_table()
_ROW = np.minimum(_COLUMN, C)
# 256 labelId values -> confusion rows / columns, as 0/1 matrices: counts = FOLD_ROWS @ pairs @ FOLD_COLUMNS
_FOLD_ROWS = np.zeros((C + 1, 256), dtype=np.int64)
_FOLD_ROWS[_ROW, np.arange(256)] = 1
_FOLD_COLUMNS = np.zeros((256, COLUMNS), dtype=np.int64)
_FOLD_COLUMNS[np.arange(256), _COLUMN] = 1


def _pair_histogram(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(256, 256) int64 counts of value pairs of two uint8 arrays of one shape.

    Each pair is read as one 16-bit number (the arrays interleaved). Label maps are mostly long runs of one
    pair, so the runs are counted (about 1.7x faster than a histogram of every pixel); maps with many short runs
    (noise) take OpenCV's histogram, over blocks of rows small enough for its float32 counts to stay exact."""
    import cv2

    width = first.shape[-1] if first.ndim > 1 else len(first)
    first, second = first.reshape(-1, width), second.reshape(-1, width)
    keys = cv2.merge([second, first]).view(np.uint16).ravel()  # little-endian: first in the high byte
    changes = keys[1:] != keys[:-1]
    if np.count_nonzero(changes) < keys.size // 16:
        starts = np.flatnonzero(changes)
        starts += 1
        starts = np.concatenate(([0], starts))
        lengths = np.diff(starts, append=keys.size)
        return np.bincount(keys[starts], weights=lengths, minlength=1 << 16).astype(np.int64).reshape(256, 256)
    total = np.zeros(1 << 16, dtype=np.int64)
    rows = max(1, (1 << 24) // width)
    for start in range(0, keys.size, rows * width):
        total += cv2.calcHist([keys[start:start + rows * width]], [0], None, [1 << 16], [0, 1 << 16]
                              ).ravel().astype(np.int64)
    return total.reshape(256, 256)


_INSTANCE_CATEGORY = _instance_categories()
_IGNORED_INSTANCE_CATEGORY = _ignored_instance_category()


class ConfusionMatrix:
    """(C+1) x (C+2) pixel counts of ground truth (rows) against prediction (columns), see the module docstring.
    Add images, merge accumulators from other workers, or all-reduce across processes."""

    def __init__(self) -> None:
        self.counts = np.zeros((C + 1, COLUMNS), dtype=np.int64)

    def add(self, prediction_label_ids: np.ndarray, target_label_ids: np.ndarray) -> None:
        """Count one or more images given as Cityscapes labelIds (convert trainIds with TRAINID_TO_LABELID,
        paper indices with PAPER_TO_LABELID)."""
        if prediction_label_ids.shape != target_label_ids.shape:
            raise ValueError(f"prediction {prediction_label_ids.shape} and target {target_label_ids.shape} differ")
        pairs = _pair_histogram(np.asarray(target_label_ids, np.uint8), np.asarray(prediction_label_ids, np.uint8))
        if pairs[NUM_LABEL_IDS:].any() or pairs[:, NUM_LABEL_IDS:].any():
            raise ValueError(f"values beyond the labelIds 0..{NUM_LABEL_IDS - 1}")
        ids = slice(0, NUM_LABEL_IDS)  # small integer products: exact, and no BLAS threads in worker processes
        self.counts += _FOLD_ROWS[:, ids] @ pairs[ids, ids] @ _FOLD_COLUMNS[ids]

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.counts += other.counts
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum over the processes of a torch.distributed group (no-op when not distributed)."""
        import torch
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            tensor = torch.from_numpy(self.counts.copy())
            dist.all_reduce(tensor)
            self.counts = tensor.numpy()
        return self


# Confusion columns that only labelIds above 18 reach (traffic light .. bicycle, caravan, trailer): in trainIds
# (0..18) no prediction reaches them.
_ONLY_ABOVE_18 = np.array(sorted(set(_COLUMN[19:NUM_LABEL_IDS]) - set(_COLUMN[:19])))


def train_id_share(confusion: ConfusionMatrix) -> float | None:
    """The share of predicted pixels on labels that are void in labelIds, when the predictions look like trainIds
    (no value above 18 and most pixels void: trainIds 0..6 read as labelIds are all void); else None."""
    predicted = confusion.counts.sum(axis=0)
    total = predicted.sum()
    if total == 0 or predicted[_ONLY_ABOVE_18].any():
        return None
    share = float(predicted[C] / total)
    return share if share > 0.5 else None


@dataclass
class InstanceStats:
    """Per-class instance-weighted true positives and false negatives (the iIoU counts), by trainId and by
    category. ``area_scale`` rescales the evaluator's average instance sizes to the image size in use."""

    area_scale: float = 1.0
    tp: np.ndarray = field(default_factory=lambda: np.zeros(C))
    fn: np.ndarray = field(default_factory=lambda: np.zeros(C))
    category_tp: np.ndarray = field(default_factory=lambda: np.zeros(len(CATEGORY_NAMES)))
    category_fn: np.ndarray = field(default_factory=lambda: np.zeros(len(CATEGORY_NAMES)))
    seen: bool = False

    def add(self, prediction_label_ids: np.ndarray, instance_ids: np.ndarray) -> None:
        """Count one image: the prediction in labelIds (as submitted; convert trainIds with TRAINID_TO_LABELID)
        and ``*_instanceIds.png`` content (labelId*1000+k for instances)."""
        where = np.flatnonzero(instance_ids > 1000)  # the evaluator's rule: instance ids only
        self.add_pixels(prediction_label_ids.ravel().take(where), instance_ids.ravel().take(where))

    def add_pixels(self, predicted: np.ndarray, instance_ids: np.ndarray) -> None:
        """Count one image given only at its instance pixels: predicted labelIds and instance ids (> 1000)."""
        sizes = _average_instance_sizes() * self.area_scale
        self.seen = True
        if instance_ids.size == 0:
            return
        instances, predicted = instance_ids.astype(np.int64), predicted.astype(np.int64)
        if predicted.min() < 0 or predicted.max() > 255:
            raise ValueError("predicted labelIds beyond 0..255")
        per_id = np.bincount(instances)  # indexed by instance id (< 34000)
        ids = np.flatnonzero(per_id)
        pixel_counts = per_id[ids]
        # one pass over the pixels: counts of (instance, predicted labelId), instances renumbered 0..n-1
        renumber = np.zeros(len(per_id), dtype=np.int64)
        renumber[ids] = np.arange(len(ids))
        pairs = np.bincount(renumber[instances] * 256 + predicted, minlength=len(ids) * 256).reshape(len(ids), 256)
        hits = pairs[np.arange(len(ids)), ids // 1000]
        # a category hit: predicted as any label with instances of the instance's category (caravan counts for car)
        same_category = _INSTANCE_CATEGORY[None, :] == _INSTANCE_CATEGORY[ids // 1000][:, None]
        category_hits = (pairs * same_category).sum(axis=1)
        train_ids = LABELID_TO_TRAINID[ids // 1000].astype(np.int64)
        counted = train_ids < C  # ignored classes (caravan, trailer) do not count
        train_ids, pixel_counts = train_ids[counted], pixel_counts[counted]
        weights = sizes[train_ids] / pixel_counts
        categories = TRAINID_TO_CATEGORY[train_ids]
        n_categories = len(CATEGORY_NAMES)
        self.tp += np.bincount(train_ids, hits[counted] * weights, minlength=C)
        self.fn += np.bincount(train_ids, (pixel_counts - hits[counted]) * weights, minlength=C)
        self.category_tp += np.bincount(categories, category_hits[counted] * weights, minlength=n_categories)
        self.category_fn += np.bincount(categories, (pixel_counts - category_hits[counted]) * weights,
                                        minlength=n_categories)

    def merge(self, other: InstanceStats) -> InstanceStats:
        for name in ("tp", "fn", "category_tp", "category_fn"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seen = self.seen or other.seen
        return self


@dataclass(frozen=True)
class OfficialScores:
    """The official scores as fractions. NaN where a score is undefined (class absent from ground truth and
    prediction, or no instance ids given)."""

    class_iou: dict[str, float]
    class_iiou: dict[str, float]
    category_iou: dict[str, float]
    category_iiou: dict[str, float]

    @property
    def miou(self) -> float:
        return _nanmean(self.class_iou.values())

    @property
    def iiou(self) -> float:
        return _nanmean(self.class_iiou.values())

    @property
    def category_miou(self) -> float:
        return _nanmean(self.category_iou.values())

    @property
    def category_iiou_mean(self) -> float:
        return _nanmean(self.category_iiou.values())

    def as_dict(self) -> dict:
        """The JSON layout of ``cityscapes-lab evaluate``."""
        return {"mIoU": self.miou, "iIoU": self.iiou, "category_mIoU": self.category_miou,
                "category_iIoU": self.category_iiou_mean, "class_IoU": self.class_iou,
                "class_iIoU": self.class_iiou, "category_IoU": self.category_iou,
                "category_iIoU_per_category": self.category_iiou}


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def _ratio(tp: float, denominator: float) -> float:
    return float(tp) / denominator if denominator > 0 else float("nan")


def _category_has_instances(category: int) -> bool:
    """The evaluator scores iIoU only for categories whose every label has instances (human, vehicle)."""
    name = CATEGORY_NAMES[category]
    return all(label.hasInstances for label in ID_TO_LABEL.values() if label.category == name)


def official_scores(confusion: ConfusionMatrix, instances: InstanceStats | None = None) -> OfficialScores:
    """Per-class and per-category IoU and iIoU from the accumulated counts (formulas in the module docstring)."""
    cm = confusion.counts.astype(np.float64)
    tp = np.diag(cm[:C, :C])
    fn = cm[:C, :].sum(axis=1) - tp  # gt c predicted as anything else, ignored labels included
    fp = cm[:C, :C].sum(axis=0) - tp  # predicted c on another evaluated class
    class_iou = {name: _ratio(tp[c], tp[c] + fp[c] + fn[c]) for c, name in enumerate(TRAIN_CLASS_NAMES)}
    # categories: merge the evaluated classes (member[k, c] = 1 when class c is in category k)
    member = np.zeros((len(CATEGORY_NAMES), C))
    member[TRAINID_TO_CATEGORY, np.arange(C)] = 1
    by_category = member @ cm[:C, :C] @ member.T  # gt category x predicted category, evaluated classes only
    cat_tp = np.diag(by_category)
    cat_fn = member @ cm[:C, :].sum(axis=1) - cat_tp
    cat_fp = by_category.sum(axis=0) - cat_tp
    category_iou = {name: _ratio(cat_tp[k], cat_tp[k] + cat_fp[k] + cat_fn[k]) for k, name in enumerate(CATEGORY_NAMES)}
    class_iiou = {name: float("nan") for name in TRAIN_CLASS_NAMES}
    category_iiou = {name: float("nan") for name in CATEGORY_NAMES}
    if instances is not None and instances.seen:
        sizes = _average_instance_sizes()
        for c, name in enumerate(TRAIN_CLASS_NAMES):
            if not math.isnan(sizes[c]):
                class_iiou[name] = _ratio(instances.tp[c], instances.tp[c] + fp[c] + instances.fn[c])
        # for iIoU a category's predictions include its ignored instance labels (column C+1, the vehicles)
        ignored_instance_fp = (1 - member) @ cm[:C, C + 1]  # gt evaluated and outside the category
        for k, name in enumerate(CATEGORY_NAMES):
            if _category_has_instances(k):
                extra = ignored_instance_fp[k] if name == _IGNORED_INSTANCE_CATEGORY else 0.0
                tp_k, fn_k = instances.category_tp[k], instances.category_fn[k]
                category_iiou[name] = _ratio(tp_k, tp_k + cat_fp[k] + extra + fn_k)
    return OfficialScores(class_iou, class_iiou, category_iou, category_iiou)
