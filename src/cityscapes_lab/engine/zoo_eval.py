"""``cityscapes-lab zoo eval``: a model with its weights on a split of the raw download, at the original
resolution, with one of its published test-time protocols; the official scores and the time per image."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..data.layout import annotation_path
from ..data.raw import open_raw, scan
from ..errors import DataError
from ..interrupts import raise_if_interrupted
from ..metrics.official import ConfusionMatrix, InstanceStats, OfficialScores, official_scores
from .prediction import Predictor


@dataclass(frozen=True)
class ZooEvaluation:
    scores: OfficialScores
    images: int
    seconds_per_image: float


def check_split(split: str) -> None:
    """Refuse the official test split: its ground truth is not public (the files hold only the void borders)."""
    if split == "test":
        raise DataError("--split test: the test split has no public labels, so it cannot be scored here; score val, "
                        "or make a test-server submission with `cityscapes-lab predict ... leftImg8bit/test --out DIR` "
                        "(its labelIds/ folder is the submission format)")


def evaluate_on_raw(predictor: Predictor, raw: Path, split: str = "val", limit: int | None = None,
                    show_progress: bool = True) -> ZooEvaluation:
    """Predict every image of ``split`` (or the first ``limit``) and score it against the ground truth of the
    pixels its protocol scores (all of them, or the centre crop of ``center-crop``)."""
    check_split(split)
    index = open_raw(raw)
    frames = scan(index, {split: "gtFine"})[split][:limit]
    confusion, instances = ConfusionMatrix(), InstanceStats()
    with_instances = True
    seconds = 0.0
    bar = tqdm(frames, desc=f"zoo eval ({split})", unit="img", disable=None if show_progress else True,
               dynamic_ncols=True)  # tqdm's remaining-time estimate matters: a CPU takes minutes per image
    for frame in bar:
        raise_if_interrupted()
        image = index.decode(frame.image)[..., :3]
        start = time.perf_counter()
        predicted = predictor(image)
        seconds += time.perf_counter() - start
        scored = predictor.protocol.scored  # the ground truth of the pixels predicted: all, or a centre crop (U2PL)
        truth = scored(index.decode(frame.label))
        try:
            confusion.add(predicted, truth)
        except ValueError:
            raise DataError(f"{index.describe(frame.label)}: holds values beyond the labelIds 0..33; use the official "
                            "*_gtFine_labelIds.png files") from None
        instance_path = annotation_path(split, frame.frame, "instanceIds.png")
        if instance_path in index.files:
            instances.add(predicted, scored(index.decode(instance_path)))
        else:
            with_instances = False
    return ZooEvaluation(official_scores(confusion, instances if with_instances else None), len(frames),
                         seconds / max(1, len(frames)))
