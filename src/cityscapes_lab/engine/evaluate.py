"""Scoring predictions of a split with both metric families: the study's per-image scores (paper protocol) and
the official 19-class scores, at the prepared resolution or, on request, at the original one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..data import png
from ..data.layout import annotation_path, find_frame_id
from ..data.prepared import SplitArrays
from ..data.raw import open_raw
from ..errors import DataError
from ..labels import PAPER_NUM_CLASSES, PAPER_TO_LABELID, TRAINID_TO_LABELID
from ..metrics.official import FULL_IMAGE_AREA, ConfusionMatrix, InstanceStats, OfficialScores, official_scores
from ..metrics.paper import PaperScores, paper_scores


@dataclass(frozen=True)
class SplitScores:
    split: str
    official: OfficialScores
    paper: PaperScores | None = None  # the study's metric, paper protocol only
    full_resolution: OfficialScores | None = None

    def summary(self) -> dict[str, float]:
        """Flat name -> value, as stored in the results database."""
        values = {"miou": self.official.miou, "iiou": self.official.iiou,
                  "category_miou": self.official.category_miou, "category_iiou": self.official.category_iiou_mean}
        if self.paper is not None:
            values.update(paper_miou=self.paper.miou, paper_mpa=self.paper.mpa)
        if self.full_resolution is not None:
            values.update(full_miou=self.full_resolution.miou, full_iiou=self.full_resolution.iiou)
        values.update({f"iou/{name}": value for name, value in self.official.class_iou.items()})
        return values


def label_ids_of(predictions: np.ndarray, protocol: str) -> np.ndarray:
    """Class indices of a protocol (paper indices or trainIds, 255 -> unlabeled) as Cityscapes labelIds."""
    return (PAPER_TO_LABELID if protocol == "paper" else TRAINID_TO_LABELID)[predictions]


def score_split(predictions: np.ndarray, split: SplitArrays, protocol: str, chunk: int = 64,
                image_area: int | None = None) -> SplitScores:
    """Scores of (N, H, W) predictions (paper indices or trainIds, by protocol) against a labeled split, read
    ``chunk`` images at a time. ``image_area``: pixels of a whole stored image, where the predictions cover a crop
    of it (the iIoU weights instances by their size at the stored resolution)."""
    if split.labels is None:
        raise DataError(f"split {split.name!r} has no labels to score against")
    confusion = ConfusionMatrix()
    instances = None
    if split.instances is not None:
        height, width = predictions.shape[1:]
        instances = InstanceStats(area_scale=(image_area or height * width) / FULL_IMAGE_AREA)
    accuracy, iou = [], []
    for start in range(0, len(predictions), chunk):
        rows = slice(start, start + chunk)
        predicted, labels = predictions[rows], np.asarray(split.labels[rows])
        label_ids = label_ids_of(predicted, protocol)
        confusion.add(label_ids, label_ids_of(labels, protocol))
        if instances is not None:
            for prediction, instance_ids in zip(label_ids, np.asarray(split.instances[rows])):
                instances.add(prediction, instance_ids)
        if protocol == "paper":
            part = paper_scores(predicted, labels, PAPER_NUM_CLASSES)
            accuracy.append(part.pixel_accuracy)
            iou.append(part.iou)
    paper = PaperScores(np.concatenate(accuracy), np.concatenate(iou)) if protocol == "paper" else None
    return SplitScores(split.name, official_scores(confusion, instances), paper)


class _Cropped:
    """Rows of an (N, H, W) array, read when indexed, cut to an evaluation rule's scored region."""

    def __init__(self, array, protocol):
        self.array, self.protocol = array, protocol

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, rows) -> np.ndarray:
        block = np.asarray(self.array[rows])
        return block[(slice(None), *self.protocol.region(*block.shape[1:3]))]


def cropped(split: SplitArrays, protocol) -> SplitArrays:
    """The split's labels and instance ids as an evaluation rule scores them: whole, or its centre crop (U2PL),
    so that they cover the pixels ``inference.predict_with`` predicts."""
    if protocol.score_crop is None:
        return split
    return SplitArrays(split.name, split.ids, split.images, None if split.labels is None else _Cropped(split.labels, protocol),
                       None if split.instances is None else _Cropped(split.instances, protocol))


def score_full_resolution(predictions: np.ndarray, ids: list[str], protocol: str, raw: Path,
                          split: str = "val") -> OfficialScores:
    """Official scores with predictions upsampled (nearest) to the original ground truth of the raw download."""
    index = open_raw(raw)
    confusion, instances = ConfusionMatrix(), InstanceStats()
    for prediction, image_id in zip(label_ids_of(predictions, protocol), ids):
        frame = find_frame_id(image_id)
        label = index.decode(annotation_path(split, frame, "labelIds.png"))
        full = cv2.resize(prediction, (label.shape[1], label.shape[0]), interpolation=cv2.INTER_NEAREST)
        confusion.add(full, label)
        instance_path = annotation_path(split, frame, "instanceIds.png")
        if instance_path in index.files:
            instances.add(full, index.decode(instance_path))
    return official_scores(confusion, instances if instances.seen else None)


def write_predictions(folder: Path, predictions: np.ndarray, ids: list[str], protocol: str,
                      size: tuple[int, int] | None = None) -> None:
    """Official submission format: one labelIds PNG per image, ``<city>_<seq>_<frame>_pred_labelIds.png``,
    upsampled (nearest) to ``size`` (W, H), normally the original 2048x1024."""
    from .. import atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for prediction, image_id in zip(label_ids_of(predictions, protocol), ids):
        if size is not None and (prediction.shape[1], prediction.shape[0]) != tuple(size):
            prediction = cv2.resize(prediction, tuple(size), interpolation=cv2.INTER_NEAREST)
        atomic.write_bytes(folder / f"{image_id}_pred_labelIds.png", png.encode(prediction))
