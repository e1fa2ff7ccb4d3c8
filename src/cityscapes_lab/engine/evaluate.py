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


class SplitScorer:
    """The scores of a split's predictions taken chunk by chunk (``add``), so that no caller needs to hold the
    predictions of a whole split (2975 full-resolution images are 5.8 GB). ``image_area``: pixels of a whole
    stored image, where the predictions cover a crop of it (the iIoU weights instances by their size at the
    stored resolution)."""

    def __init__(self, name: str, protocol: str, image_area: int | None = None) -> None:
        self.name, self.protocol, self.image_area = name, protocol, image_area
        self.confusion = ConfusionMatrix()
        self.instances: InstanceStats | None = None
        self.accuracy: list[np.ndarray] = []
        self.iou: list[np.ndarray] = []

    def add(self, predicted: np.ndarray, labels: np.ndarray, instance_ids: np.ndarray | None = None) -> None:
        """Count (n, H, W) predictions (paper indices or trainIds, by protocol) against their labels and,
        where the split has them, instance ids."""
        label_ids = label_ids_of(predicted, self.protocol)
        self.confusion.add(label_ids, label_ids_of(labels, self.protocol))
        if instance_ids is not None:
            if self.instances is None:
                height, width = predicted.shape[1:]
                self.instances = InstanceStats(area_scale=(self.image_area or height * width) / FULL_IMAGE_AREA)
            for prediction, instances in zip(label_ids, instance_ids):
                self.instances.add(prediction, instances)
        if self.protocol == "paper":
            part = paper_scores(predicted, labels, PAPER_NUM_CLASSES)
            self.accuracy.append(part.pixel_accuracy)
            self.iou.append(part.iou)

    def add_rows(self, predicted: np.ndarray, split: SplitArrays, rows: slice) -> None:
        """``add`` the predictions of ``rows`` of a labeled split, with its labels and instance ids there."""
        self.add(predicted, np.asarray(split.labels[rows]),
                 None if split.instances is None else np.asarray(split.instances[rows]))

    def result(self) -> SplitScores:
        paper = PaperScores(np.concatenate(self.accuracy), np.concatenate(self.iou)) if self.accuracy else None
        return SplitScores(self.name, official_scores(self.confusion, self.instances), paper)


def score_split(predictions: np.ndarray, split: SplitArrays, protocol: str, chunk: int = 64,
                image_area: int | None = None) -> SplitScores:
    """Scores of (N, H, W) predictions (paper indices or trainIds, by protocol) against a labeled split, read
    ``chunk`` images at a time (``SplitScorer``)."""
    if split.labels is None:
        raise DataError(f"split {split.name!r} has no labels to score against")
    scorer = SplitScorer(split.name, protocol, image_area)
    for start in range(0, len(predictions), chunk):
        rows = slice(start, start + chunk)
        scorer.add_rows(predictions[rows], split, rows)
    return scorer.result()


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


class FullResolutionScorer:
    """Official scores with predictions upsampled (nearest) to the original ground truth of the raw download,
    taken chunk by chunk (``add``) as ``SplitScorer``."""

    def __init__(self, raw: Path, protocol: str, split: str = "val") -> None:
        self.index, self.protocol, self.split = open_raw(raw), protocol, split
        self.confusion, self.instances = ConfusionMatrix(), InstanceStats()

    def add(self, predictions: np.ndarray, ids: list[str]) -> None:
        for prediction, image_id in zip(label_ids_of(predictions, self.protocol), ids):
            frame = find_frame_id(image_id)
            label = self.index.decode(annotation_path(self.split, frame, "labelIds.png"))
            full = cv2.resize(prediction, (label.shape[1], label.shape[0]), interpolation=cv2.INTER_NEAREST)
            self.confusion.add(full, label)
            instance_path = annotation_path(self.split, frame, "instanceIds.png")
            if instance_path in self.index.files:
                self.instances.add(full, self.index.decode(instance_path))

    def result(self) -> OfficialScores:
        return official_scores(self.confusion, self.instances if self.instances.seen else None)


def score_full_resolution(predictions: np.ndarray, ids: list[str], protocol: str, raw: Path,
                          split: str = "val") -> OfficialScores:
    """Official scores of (N, H, W) predictions at the original resolution (``FullResolutionScorer``)."""
    scorer = FullResolutionScorer(raw, protocol, split)
    scorer.add(predictions, ids)
    return scorer.result()


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
