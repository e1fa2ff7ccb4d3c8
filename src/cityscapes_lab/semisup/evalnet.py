"""EvalNet (notes 5.8, 5.10): a network that predicts how good a candidate mask is, its training data and its
scores (it trains as the ``evalnet`` kind of the one training loop, ``engine.kinds``). The EvalNet approach uses it to pick masks; IM++ and AIM++ to weight IM pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.arrays import load_arrays, load_extra
from ..data.augment import AugmentParams, augment
from ..data.prepared import SplitArrays
from ..engine.inference import predict
from ..engine.runtime import Runtime
from ..models.checkpoints import load_checkpoint
from ..models.evalnet import EvalNet
from ..seeds import derive_seed
from .pseudo import load_model
from .rules import evalnet_im_targets, evalnet_score, evalnet_targets, inconsistency_mask

IM_AUGMENT = AugmentParams((0.8, 1.2), (-10.0, 10.0), max_blur=1, max_noise=10)  # EvalNet-IM data (notes 5.10)


@dataclass(frozen=True)
class EvalNetRows:
    """Training rows of an EvalNet: image (by index into ``images``), candidate mask, targets."""

    images: np.ndarray  # (M, H, W, 3) uint8 (or a RowArray)
    image_index: np.ndarray  # (R,) row -> image
    masks: np.ndarray  # (R, H, W) uint8 candidate masks
    iou: np.ndarray  # (R, C) float32 targets
    detection: np.ndarray  # (R, C) float32 targets

    def __len__(self) -> int:
        return len(self.image_index)


def save_rows(folder: Path, rows: EvalNetRows) -> None:
    from ..data.arrays import save_arrays

    save_arrays(folder, SplitArrays(Path(folder).name, [str(i) for i in range(len(rows.images))],
                                    np.asarray(rows.images), None),
                {"image_index": rows.image_index, "masks": rows.masks, "iou": rows.iou, "detection": rows.detection})


def load_rows(folder: Path) -> EvalNetRows:
    arrays = load_arrays(folder)
    extra = {name: load_extra(folder, name) for name in ("image_index", "masks", "iou", "detection")}
    return EvalNetRows(arrays.images, np.asarray(extra["image_index"]), extra["masks"], np.asarray(extra["iou"]),
                       np.asarray(extra["detection"]))


def candidate_rows(model_paths: list[Path], split: SplitArrays, num_classes: int, runtime: Runtime
                   ) -> EvalNetRows:
    """EvalNet-approach rows: every model's prediction on every image of a labeled split, plus one ground-truth
    row per image (targets from that same image: the original used the last image's, notes 8.5)."""
    images = np.asarray(split.images)
    truth = np.asarray(split.labels)
    masks, index = [truth], [np.arange(len(split))]
    for path in model_paths:
        masks.append(predict(load_model(path, runtime), images, runtime))
        index.append(np.arange(len(split)))
    masks_all, index_all = np.concatenate(masks), np.concatenate(index)
    targets = [evalnet_targets(mask, truth[i], num_classes) for mask, i in zip(masks_all, index_all)]
    return EvalNetRows(images, index_all, masks_all, np.stack([t[0] for t in targets]),
                       np.stack([t[1] for t in targets]))


def im_rows(model_paths: list[Path], split: SplitArrays, loops: int, num_classes: int, seed: int,
            runtime: Runtime) -> EvalNetRows:
    """EvalNet-IM rows (IM++ / AIM++): ``loops`` passes over a labeled split; each image gets the IM pair of k
    randomly chosen models (k in 2..4), a random erosion and dilation of the mask (0, 3 or 5), and, with p=0.5,
    an augmentation applied after the targets are computed (notes 5.10)."""
    images = np.asarray(split.images)
    truth = np.asarray(split.labels)
    models = [load_model(path, runtime) for path in model_paths]
    predicted = np.stack([predict(m, images, runtime) for m in models])  # (models, N, H, W)
    out_images, masks, ious, detections = [], [], [], []
    for loop in range(loops):
        for i, image_id in enumerate(split.ids):
            rng = np.random.default_rng(derive_seed(seed, "evalnet-im", loop, image_id))
            k = int(rng.integers(2, min(4, len(models)) + 1)) if len(models) >= 2 else 1
            chosen = rng.choice(len(models), size=k, replace=False)
            erode, dilate = (int(v) for v in rng.choice([0, 3, 5], size=2))
            label, mask, image = inconsistency_mask(predicted[chosen, i], images[i], erode, dilate)
            iou, detection = evalnet_im_targets(label, mask, truth[i], num_classes)
            if rng.random() < 0.5:
                image, label = augment(image, label, IM_AUGMENT, rng)
            out_images.append(image)
            masks.append(label)
            ious.append(iou)
            detections.append(detection)
    return EvalNetRows(np.stack(out_images), np.arange(len(out_images)), np.stack(masks), np.stack(ious),
                       np.stack(detections))


def load_evalnet(path: Path, runtime: Runtime) -> nn.Module:
    saved = load_checkpoint(path, map_location="cpu")
    model = EvalNet(saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    model = model.to(runtime.device)
    return (model.to(memory_format=torch.channels_last) if runtime.channels_last else model).eval()


@torch.no_grad()
def ensemble_outputs(evalnets: list[nn.Module], images: np.ndarray, masks: np.ndarray, runtime: Runtime
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Mean (iou, detection) of several EvalNets for a batch of images (B, H, W, 3) and masks (B, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    x = (x if runtime.channels_last else x.contiguous()).to(runtime.device)
    m = torch.from_numpy(np.asarray(masks).astype(np.int64)).to(runtime.device)
    ious, detections = [], []
    for net in evalnets:
        with runtime.autocast():
            iou, detection = net(x, m)
        ious.append(iou.float())
        detections.append(detection.float())
    return torch.stack(ious).mean(0).cpu().numpy(), torch.stack(detections).mean(0).cpu().numpy()


def score_masks(evalnets: list[nn.Module], images, masks, runtime: Runtime, classes: slice = slice(None)
                ) -> np.ndarray:
    """The EvalNet ensemble's score (``rules.evalnet_score``) of every (image, mask) pair, shape (N,), in batches
    of ``runtime.eval_batch_size``."""
    scores = np.empty(len(masks), dtype=np.float64)
    for start in range(0, len(masks), runtime.eval_batch_size):
        rows = slice(start, min(start + runtime.eval_batch_size, len(masks)))
        iou, detection = ensemble_outputs(evalnets, np.asarray(images[rows]), np.asarray(masks[rows]), runtime)
        scores[rows] = [evalnet_score(i, d, classes) for i, d in zip(iou, detection)]
    return scores
