"""Pseudo-labelling: teachers label unlabeled images in batches from memory, and the students' training sets
are composed from those pairs, kept in the prepared-array format (``data.arrays``), not as PNGs."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import atomic
from ..data.arrays import LINKS, link_arrays, links_to, load_arrays
from ..data.augment import AugmentParams, augment
from ..data.prepared import SplitArrays
from ..data.rows import BlankedRows, RowArray, StackedRows, part_starts
from ..models.checkpoints import load_checkpoint
from ..engine.runtime import Runtime
from ..models import build_model
from ..seeds import derive_seed
from .rules import blank_image, ensemble_label, inconsistency_label, input_ensemble_inputs


def load_model(path: Path, runtime: Runtime) -> nn.Module:
    """A network from one of our checkpoints (``best.pt`` / ``top<k>.pt``), in eval mode."""
    saved = load_checkpoint(path, map_location="cpu")
    model = build_model(saved["model_name"], saved["num_classes"], **saved["model_options"])
    model.load_state_dict(saved["state_dict"])
    model = model.to(runtime.device)
    return (model.to(memory_format=torch.channels_last) if runtime.channels_last else model).eval()


def _logits(models: list[nn.Module], images: np.ndarray, runtime: Runtime):
    """Each model's logits (B, C, H, W) float32 for a batch of (B, H, W, 3) uint8 images, one at a time."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    x = (x if runtime.channels_last else x.contiguous()).to(runtime.device)
    for model in models:
        with runtime.autocast():
            yield model(x).float()


@torch.no_grad()
def probabilities(models: list[nn.Module], images: np.ndarray, runtime: Runtime
                  ) -> torch.Tensor:
    """Softmax outputs (n_models, B, C, H, W) float32 of a batch of (B, H, W, 3) uint8 images."""
    return torch.stack([torch.softmax(logits, dim=1) for logits in _logits(models, images, runtime)])


@torch.no_grad()
def mean_probabilities(models: list[nn.Module], images: np.ndarray, runtime: Runtime
                       ) -> torch.Tensor:
    """The models' mean softmax (B, C, H, W), accumulated one model at a time."""
    total = None
    for logits in _logits(models, images, runtime):
        probs = torch.softmax(logits, dim=1)
        total = probs if total is None else total.add_(probs)
    return total / len(models)


@torch.no_grad()
def predicted_classes(models: list[nn.Module], images: np.ndarray, runtime: Runtime
                      ) -> np.ndarray:
    """Each model's predicted classes (n_models, B, H, W) uint8 (argmax of the logits: no softmax needed)."""
    return np.stack([logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
                     for logits in _logits(models, images, runtime)])


@dataclass(frozen=True)
class LabelingRule:
    """How teachers turn an unlabeled image into a training pair."""

    KINDS = ("ensemble", "input_ensemble", "teacher", "im")

    kind: str  # one of KINDS
    copies: int = 0  # input_ensemble: augmented copies per image (the study: n+1 for n in 3, 5, 7)
    photometric: AugmentParams = AugmentParams((0.7, 1.3), (-15.0, 15.0), 1, 15)  # input ensemble (notes 5.5)
    cumulative: bool = True  # input ensemble: each copy augments the previous (the study)
    erode: int = 0  # IM morphology (0 for Cityscapes, config.ini ERODE_KERNEL / DILATE_KERNEL)
    dilate: int = 0
    block_input: bool = True
    block_output: bool = True
    fill: int | None = 0  # IM: the label where teachers disagree (0 paper, 255 standard: ignored; None: teacher's)

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown labelling rule {self.kind!r}; the rules are: {', '.join(self.KINDS)}")

    @property
    def blocks_input(self) -> bool:
        """Whether its pairs' images are the unlabeled images with the IM mask set to 0 (else they are unchanged)."""
        return self.kind == "im" and self.block_input


def label_batch(models: list[nn.Module], images: np.ndarray, ids: list[str], rule: LabelingRule,
                runtime: Runtime, seed: int, with_images: bool = True
                ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Pseudo pairs of one batch: (images, labels, masks or None), each (B, H, W[, 3]). ``with_images=False``
    returns None for the images (a caller that links to the unlabeled rows, or wants only the masks, need not
    have IM's blanked copies made)."""
    unchanged = images if with_images else None  # the pairs' images where the rule keeps them as they are
    if rule.kind == "input_ensemble":
        labels = np.empty(images.shape[:3], dtype=np.uint8)
        for i, (image, image_id) in enumerate(zip(images, ids)):
            rng = np.random.default_rng(derive_seed(seed, "input_ensemble", image_id))
            inputs = np.stack(input_ensemble_inputs(image, rule.copies, rule.photometric, rng, rule.cumulative))
            per_input = probabilities(models, inputs, runtime)[0]  # one teacher: (copies, C, H, W)
            labels[i] = ensemble_label(per_input.cpu().numpy())
        return unchanged, labels, None
    if rule.kind == "ensemble":
        mean = mean_probabilities(models, images, runtime)
        return unchanged, mean.argmax(dim=1).to(torch.uint8).cpu().numpy(), None
    if rule.kind not in ("teacher", "im"):  # never fall through to IM
        raise ValueError(f"label_batch has no code for the labelling rule {rule.kind!r}")
    predicted = predicted_classes(models, images, runtime)  # (n, B, H, W)
    if rule.kind == "teacher":
        return unchanged, predicted[0], None
    labels, masks = np.empty(images.shape[:3], np.uint8), np.empty(images.shape[:3], bool)
    for i in range(len(images)):
        labels[i], masks[i] = inconsistency_label(predicted[:, i], rule.erode, rule.dilate, rule.block_output,
                                                  rule.fill)
    if not with_images:
        return None, labels, masks
    out_images = np.stack([blank_image(image, mask) for image, mask in zip(images, masks)]) if rule.block_input \
        else images.copy()
    return out_images, labels, masks


def write_pseudo_pairs(folder: Path, models: list[nn.Module], split: SplitArrays, rule: LabelingRule,
                       runtime: Runtime, seed: int, batch_size: int = 8,
                       progress: Callable[[int], None] = lambda n: None) -> SplitArrays:
    """Label every image of ``split`` and save the pairs (and IM masks) as an array folder, atomically. The
    images are links to the split's rows (blanked by the IM masks where IM blocks the input), not a copy."""
    folder = Path(folder)
    partial = atomic.partial_path(folder)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    n, shape = len(split), split.images.shape[1:3]
    linked = _row_parts(split.images)  # None: the split is held in memory, so its pairs hold their own images
    images = None if linked else np.lib.format.open_memmap(partial / "images.npy", "w+", np.uint8, (n, *shape, 3))
    labels = np.lib.format.open_memmap(partial / "labels.npy", "w+", np.uint8, (n, *shape))
    masks = np.lib.format.open_memmap(partial / "masks.npy", "w+", bool, (n, *shape)) if rule.kind == "im" else None
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        batch_images, batch_labels, batch_masks = label_batch(models, np.asarray(split.images[rows]),
                                                              split.ids[rows], rule, runtime, seed,
                                                              with_images=images is not None)
        labels[rows] = batch_labels
        if images is not None:
            images[rows] = batch_images
        if masks is not None:
            masks[rows] = batch_masks
        progress(rows.stop - rows.start)
    for array in (images, labels, masks):
        if array is not None:
            array.flush()
    del images, labels, masks
    if linked:
        if rule.blocks_input:
            linked = _blanked(linked, RowArray(partial / "masks.npy"))
        atomic.write_json(partial / LINKS, links_to(folder, partial, images=linked))
    atomic.write_json(partial / "ids.json", {"name": split.name, "ids": list(split.ids)})
    atomic.publish_folder(partial, folder)
    return load_arrays(folder)


def mask_sizes(masks: np.ndarray) -> np.ndarray:
    """Pixels under the inconsistency mask, per image (the study's im_size)."""
    return np.asarray([int(m.sum()) for m in masks], dtype=np.int64)


@dataclass(frozen=True)
class SetParts:
    """What goes into a students' training set (a recipe row, resolved for one generation)."""

    clean: bool  # the pseudo pairs as they are
    copies: np.ndarray | None  # augmented copies per pair (None: none)
    augment: AugmentParams  # the generation's augmentation
    labeled: SplitArrays  # the labeled originals or the ALDT set


def _sources(pairs: SplitArrays, parts: SetParts) -> Iterator[tuple[str, str, int, int]]:
    """(kind, id, row, copy) of every row of the composed set, in order."""
    for row, image_id in enumerate(parts.labeled.ids):
        yield "labeled", image_id, row, 0
    if parts.clean:
        for row, image_id in enumerate(pairs.ids):
            yield "pair", image_id, row, -1
    if parts.copies is not None:
        for row, image_id in enumerate(pairs.ids):
            for copy in range(int(parts.copies[row])):
                yield "pair", image_id, row, copy


def _blanked(parts: list[RowArray], masks: RowArray) -> list[BlankedRows]:
    """``parts`` (a split's rows, in order) each blanked by its rows of ``masks``."""
    starts = part_starts(parts)
    return [BlankedRows(part, masks.subset(np.arange(starts[i], starts[i + 1]))) for i, part in enumerate(parts)]


def _row_parts(array) -> list[RowArray | BlankedRows] | None:
    """The on-disk parts of a lazily read array (None for one held in memory)."""
    if isinstance(array, (RowArray, BlankedRows)):
        return [array]
    if isinstance(array, StackedRows):
        return list(array.parts)
    return None


def compose_set(folder: Path, pairs: SplitArrays, parts: SetParts, seed: int) -> SplitArrays:
    """Write the students' training set: labeled data, clean pairs and augmented copies (copy k of a pair draws
    from its own seed), as an array folder, atomically. Row ids say where each row comes from. A set without
    augmented copies links to the rows of its sources instead of copying them (``data.arrays.link_arrays``)."""
    folder = Path(folder)
    plan = list(_sources(pairs, parts))
    if parts.copies is None or not np.any(parts.copies):
        sources = [parts.labeled] + ([pairs] if parts.clean else [])
        images, labels = [_row_parts(s.images) for s in sources], [_row_parts(s.labels) for s in sources]
        if all(p is not None for p in images + labels):
            link_arrays(folder, folder.name, [image_id for _, image_id, _, _ in plan],
                        [p for part in images for p in part], [p for part in labels for p in part])
            return load_arrays(folder)
    partial = atomic.partial_path(folder)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    shape = pairs.images.shape[1:3]
    images = np.lib.format.open_memmap(partial / "images.npy", "w+", np.uint8, (len(plan), *shape, 3))
    labels = np.lib.format.open_memmap(partial / "labels.npy", "w+", np.uint8, (len(plan), *shape))
    ids = []
    for out_row, (kind, image_id, row, copy) in enumerate(plan):
        source = parts.labeled if kind == "labeled" else pairs
        image, label = source.images[row], source.labels[row]
        if copy >= 0 and kind == "pair":
            rng = np.random.default_rng(derive_seed(seed, "copy", image_id, copy))
            image, label = augment(image, label, parts.augment, rng)
            image_id = f"{image_id}_aug_{copy}"
        images[out_row], labels[out_row] = image, label
        ids.append(image_id)
    images.flush()
    labels.flush()
    del images, labels
    atomic.write_json(partial / "ids.json", {"name": folder.name, "ids": ids})
    atomic.publish_folder(partial, folder)
    return load_arrays(folder)
