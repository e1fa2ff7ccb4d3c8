"""``cityscapes-lab evaluate``: official scores of prediction PNGs against a ground-truth folder.

Inputs are as cityscapesscripts' evaluator expects them: the ground truth folder is searched for
``*_gtFine_labelIds.png`` (and the ``*_gtFine_instanceIds.png`` beside them, for iIoU); the prediction folder
holds labelId PNGs whose names contain ``<city>_<seq>_<frame>``. The scores equal the evaluator's; the work is
a bincount per image instead of a sort, and runs over all cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import png
from ..data.layout import find_frame_id
from ..errors import DataError
from ..labels import NUM_LABEL_IDS
from ..parallel import default_workers, run_tasks
from .official import ConfusionMatrix, InstanceStats, OfficialScores, official_scores, train_id_share

CHUNK = 4


@dataclass(frozen=True)
class _Pairs:
    items: tuple[tuple[str, str, str | None], ...]  # (prediction, labelIds, instanceIds or None)
    labels_from_instances: bool = False  # read the labelIds out of the instance images (see below)


def read_instances(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An ``*_instanceIds.png`` as (labelIds (H, W) uint8, flat indices of its values of 256 and more, those values).

    The file holds the labelIds too (labelId*1000+k on instances, the labelId everywhere else: the official
    tools draw both files from the same polygons), so only the few instance pixels need arithmetic."""
    values = _read(path, "instance ground truth")
    where = np.flatnonzero(values >= 256)  # a boolean mask first: much faster than nonzero on the integers
    ids = values.ravel().take(where).astype(np.int64)
    label_ids = values.astype(np.uint8)  # exact below 256
    label_ids.ravel()[where] = np.where(ids >= 1000, ids // 1000, 255)  # 256..999 are no labelIds: refused later
    return label_ids, where, ids


def _read(path: str, what: str) -> np.ndarray:
    try:
        with open(path, "rb") as handle:
            return png.decode(handle.read())
    except (OSError, png.PngError) as exc:
        raise DataError(f"{path}: cannot read this {what} ({exc}); replace the file") from None


def _evaluate_pairs(task: _Pairs) -> tuple[ConfusionMatrix, InstanceStats | None]:
    import cv2

    cv2.setNumThreads(1)  # the pool already uses every core
    confusion, instances = ConfusionMatrix(), InstanceStats()
    use_instances = all(instance for _, _, instance in task.items)
    for prediction_path, label_path, instance_path in task.items:
        prediction = _read(prediction_path, "prediction")
        if use_instances:
            derived, where, ids = read_instances(instance_path)
        label = derived if task.labels_from_instances else _read(label_path, "ground truth")
        if prediction.ndim != 2:
            raise DataError(f"{prediction_path}: has several channels; predictions are single-channel labelId PNGs")
        if prediction.shape != label.shape:
            raise DataError(f"{prediction_path}: is {prediction.shape[1]}x{prediction.shape[0]} but its ground truth "
                            f"is {label.shape[1]}x{label.shape[0]}; predict at the ground truth's size")
        try:
            confusion.add(prediction, label)
        except ValueError:  # a value beyond the labelIds: name the file
            path, what, array = next(item for item in ((prediction_path, "prediction", prediction),
                                                       (label_path, "ground truth", label))
                                     if int(item[2].max()) >= NUM_LABEL_IDS)
            raise DataError(f"{path}: value {int(array.max())} is no Cityscapes labelId (0..33); write the {what} in "
                            "labelIds (convert trainIds with cityscapes_lab.labels.TRAINID_TO_LABELID)") from None
        if use_instances:
            counted = ids > 1000  # the evaluator's rule: instance ids only
            instances.add_pixels(prediction.ravel().take(where[counted]), ids[counted])
    return confusion, instances if use_instances else None


@dataclass(frozen=True)
class FolderEvaluation:
    scores: OfficialScores
    images: int
    with_instances: bool
    warnings: tuple[str, ...] = ()  # things that look wrong with the predictions (one line each)


def match_predictions(pred_dir: Path, gt_dir: Path) -> list[tuple[str, str, str | None]]:
    """(prediction, labelIds, instanceIds or None) for every ground-truth image, sorted; DataError when a
    prediction is missing or ambiguous."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for folder, what in ((pred_dir, "--pred"), (gt_dir, "--gt")):
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder; pass {what} an existing folder")
    labels = sorted(str(p) for p in gt_dir.rglob("*_gtFine_labelIds.png"))
    if not labels:
        raise DataError(f"{gt_dir}: holds no *_gtFine_labelIds.png files; pass --gt the gtFine/<split> folder")
    predictions: dict[str, str] = {}
    for root, _, names in os.walk(pred_dir):
        for name in names:
            frame = find_frame_id(name) if name.endswith(".png") else None
            if frame is None:
                continue
            key = str(frame)
            if key in predictions:
                raise DataError(f"{os.path.join(root, name)}: a second prediction for {key} (also "
                                f"{predictions[key]}); keep one prediction per image")
            predictions[key] = os.path.join(root, name)
    pairs = []
    for label in labels:
        key = str(find_frame_id(os.path.basename(label)))
        if key not in predictions:
            raise DataError(f"{pred_dir}: holds no prediction for {key} (ground truth {label}); predict every image")
        instance = label.replace("_gtFine_labelIds.png", "_gtFine_instanceIds.png")
        pairs.append((predictions[key], label, instance if os.path.exists(instance) else None))
    return pairs


def evaluate_folders(pred_dir: Path, gt_dir: Path, *, workers: int | None = None) -> FolderEvaluation:
    """Official scores (IoU, iIoU, category IoU and iIoU) of every ground-truth image's prediction."""
    pairs = match_predictions(pred_dir, gt_dir)
    with_instances = all(instance for _, _, instance in pairs)
    # The instance images repeat the labelIds; read them from there only if they agree with the labelIds files,
    # checked on the first image (a folder whose two files disagree is read as the evaluator reads it).
    from_instances = with_instances and np.array_equal(read_instances(pairs[0][2])[0],
                                                       _read(pairs[0][1], "ground truth"))
    chunks = [_Pairs(tuple(pairs[i:i + CHUNK]), from_instances) for i in range(0, len(pairs), CHUNK)]
    confusion, instances = ConfusionMatrix(), InstanceStats()
    for _, (part_confusion, part_instances) in run_tasks(_evaluate_pairs, chunks, workers=workers or default_workers(),
                                                        desc="evaluate", units=lambda c: len(c.items)):
        confusion.merge(part_confusion)
        if part_instances is not None:
            instances.merge(part_instances)
    warnings = []
    share = train_id_share(confusion)
    if share is not None:
        warnings.append(f"the predictions look like trainIds, not labelIds (no value above 18, {share:.0%} of the "
                        "pixels on labels that are void in labelIds); convert them with "
                        "cityscapes_lab.labels.TRAINID_TO_LABELID (trainId -> labelId) and evaluate again")
    return FolderEvaluation(official_scores(confusion, instances if with_instances else None), len(pairs),
                            with_instances, tuple(warnings))
