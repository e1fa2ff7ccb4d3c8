"""The approaches of the study as data: what each group trains on. Baselines (notes 5.2) train from scratch on a
fixed set; the semi-supervised approaches (``semisup.recipes``) add teachers and generations. ``StudySplits``
names the prepared splits a study's roles (labeled, unlabeled, full) are on each protocol."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import AugmentConfig
from ..data.arrays import save_arrays
from ..data.augment import AugmentParams, augment
from ..data.prepared import PreparedData, SplitArrays
from ..errors import ConfigError
from .keys import derive_seed


@dataclass(frozen=True)
class Baseline:
    label: str  # the name in tables and figures
    description: str
    train_set: str  # a role of StudySplits (train_full, train_labeled), or "aldt" for the augmented labeled set
    protocols: tuple[str, ...] = ("paper", "standard")


BASELINES: dict[str, Baseline] = {
    "fdt": Baseline("FDT", "full dataset training: every train image with its label (the upper line)",
                    "train_full"),
    "ldt": Baseline("LDT", "labeled dataset training: only the labeled share (the lower line; on the standard "
                    "protocol the supervised baseline of study.labeled_subset)", "train_labeled"),
    "aldt": Baseline("ALDT", "the labeled share plus 9 augmented copies of each image", "aldt", ("paper",)),
}


@dataclass(frozen=True)
class StudySplits:
    """The prepared splits behind a study's roles: the paper protocol's one labeled share, or on the standard
    protocol one labeled subset (``study.labeled_subset``) and its complement."""

    train_labeled: str
    train_unlabeled: str
    train_full: str

    def resolve(self, name: str) -> str:
        """A role (train_labeled, train_unlabeled, train_full) as its split; any other name as it is."""
        return getattr(self, name) if name in ("train_labeled", "train_unlabeled", "train_full") else name


def study_splits(data: PreparedData, labeled_subset: str) -> StudySplits:
    """The splits a study on ``data`` uses; ConfigError naming the choices when the subset is wrong or missing."""
    from ..data.splits import fraction_name

    if data.protocol == "paper":
        if labeled_subset:
            raise ConfigError(f"study.labeled_subset {labeled_subset!r}: applies to the standard protocol; the paper "
                              f"protocol's {data.root} has one labeled share (leave the setting empty)")
        return StudySplits("train_labeled", "train_unlabeled", "train_full")
    subsets = [name[len("train_labeled_"):].replace("_", "/") for name in data.splits
               if name.startswith("train_labeled_")]
    suffix = fraction_name(labeled_subset)
    if f"train_labeled_{suffix}" not in data.splits or f"train_unlabeled_{suffix}" not in data.splits:
        given = f"study.labeled_subset {labeled_subset!r}" if labeled_subset else "study.labeled_subset is not set"
        raise ConfigError(f"{given}: choose the labeled subset of {data.root} the study uses, one of "
                          f"{', '.join(subsets) or '(none: prepare it with --fractions)'}, e.g. --set "
                          f"study.labeled_subset={subsets[0] if subsets else '1/16'}")
    return StudySplits(f"train_labeled_{suffix}", f"train_unlabeled_{suffix}", "train")


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
    """Build the ALDT set once per study (as the study: one set shared by all runs; the paper protocol only)."""
    if not (Path(folder) / "ids.json").exists():
        save_arrays(folder, augmented_set(data.split("train_labeled"), params, seed))
    return Path(folder)
