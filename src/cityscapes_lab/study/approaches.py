"""The approaches of the study as data: what each group trains on. Baselines (notes 5.2) train from scratch on a
fixed set; the semi-supervised approaches (next issue) add teachers and generations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import AugmentConfig
from ..data.arrays import save_arrays
from ..data.augment import AugmentParams, augment
from ..data.prepared import PreparedData, SplitArrays
from .keys import derive_seed


@dataclass(frozen=True)
class Baseline:
    label: str  # the name in tables and figures
    description: str
    train_set: str  # a split of the prepared data, or "aldt" for the augmented labeled set


BASELINES: dict[str, Baseline] = {
    "fdt": Baseline("FDT", "full dataset training: every train image with its label (the upper line)",
                    "train_full"),
    "ldt": Baseline("LDT", "labeled dataset training: only the labeled share (the lower line)", "train_labeled"),
    "aldt": Baseline("ALDT", "the labeled share plus 9 augmented copies of each image", "aldt"),
}


def augmented_set(labeled: SplitArrays, params: AugmentConfig, seed: int) -> SplitArrays:
    """The ALDT set (notes 4): the labeled originals, then ``copies`` augmented copies of each, named
    ``<id>_aug_<k>``; copy k of image i draws from its own seed, so the set does not depend on the order of work."""
    augment_params = AugmentParams(tuple(params.contrast), tuple(params.brightness), params.max_blur,
                                   params.max_noise)
    n, copies = len(labeled), params.copies
    images = np.empty((n * (1 + copies),) + labeled.images.shape[1:], dtype=np.uint8)
    labels = np.empty((n * (1 + copies),) + labeled.labels.shape[1:], dtype=np.uint8)
    images[:n], labels[:n] = labeled.images, labeled.labels
    ids = list(labeled.ids)
    for i, image_id in enumerate(labeled.ids):
        for k in range(copies):
            rng = np.random.default_rng(derive_seed(seed, "aldt", image_id, k))
            row = n + i * copies + k
            images[row], labels[row] = augment(labeled.images[i], labeled.labels[i], augment_params, rng)
            ids.append(f"{image_id}_aug_{k}")
    return SplitArrays("aldt", ids, images, labels)


def ensure_aldt_set(data: PreparedData, folder: Path, params: AugmentConfig, seed: int) -> Path:
    """Build the ALDT set once per study (as the study: one set shared by all runs)."""
    if not (Path(folder) / "ids.json").exists():
        save_arrays(folder, augmented_set(data.split("train_labeled"), params, seed))
    return Path(folder)
