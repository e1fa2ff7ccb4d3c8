"""EvalNet (notes 5.8, 5.10): a network that predicts how good a candidate mask is, its training data, its
training, and its scores. The EvalNet approach uses it to pick masks; IM++ and AIM++ to weight IM pairs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import TrainConfig
from ..data.arrays import load_arrays, load_extra
from ..data.augment import AugmentParams, augment
from ..data.prepared import SplitArrays
from ..engine.checkpoint import load_checkpoint, save_checkpoint
from ..engine.loop import BatchStream, TrainingDiverged, autocast, predict, resolve_precision
from ..engine.optim import DecoupledAdamW
from ..models.evalnet import EvalNet
from ..study.keys import derive_seed
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


def candidate_rows(model_paths: list[Path], split: SplitArrays, num_classes: int, device: torch.device,
                   precision: str, batch_size: int) -> EvalNetRows:
    """EvalNet-approach rows: every model's prediction on every image of a labeled split, plus one ground-truth
    row per image (targets from that same image: the original used the last image's, notes 8.5)."""
    images = np.asarray(split.images)
    truth = np.asarray(split.labels)
    masks, index = [truth], [np.arange(len(split))]
    for path in model_paths:
        masks.append(predict(load_model(path, device), images, batch_size, device, precision))
        index.append(np.arange(len(split)))
    masks_all, index_all = np.concatenate(masks), np.concatenate(index)
    targets = [evalnet_targets(mask, truth[i], num_classes) for mask, i in zip(masks_all, index_all)]
    return EvalNetRows(images, index_all, masks_all, np.stack([t[0] for t in targets]),
                       np.stack([t[1] for t in targets]))


def im_rows(model_paths: list[Path], split: SplitArrays, loops: int, num_classes: int, seed: int,
            device: torch.device, precision: str, batch_size: int) -> EvalNetRows:
    """EvalNet-IM rows (IM++ / AIM++): ``loops`` passes over a labeled split; each image gets the IM pair of k
    randomly chosen models (k in 2..4), a random erosion and dilation of the mask (0, 3 or 5), and, with p=0.5,
    an augmentation applied after the targets are computed (notes 5.10)."""
    images = np.asarray(split.images)
    truth = np.asarray(split.labels)
    models = [load_model(path, device) for path in model_paths]
    predicted = np.stack([predict(m, images, batch_size, device, precision) for m in models])  # (models, N, H, W)
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


def _batch(rows: EvalNetRows, indices: np.ndarray, device: torch.device):
    images = torch.from_numpy(np.asarray(rows.images[rows.image_index[indices]])).permute(0, 3, 1, 2).to(device)
    masks = torch.from_numpy(np.asarray(rows.masks[indices]).astype(np.int64)).to(device)
    iou = torch.from_numpy(rows.iou[indices]).to(device)
    detection = torch.from_numpy(rows.detection[indices]).to(device)
    return images, masks, iou, detection


def _predict(model: nn.Module, batch, precision: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: predicted (IoU, detection), each (B, C) float32."""
    with autocast(precision, device):
        predicted_iou, predicted_detection = model(batch[0], batch[1])
    return predicted_iou.float(), predicted_detection.float()


def _loss_terms(predicted: tuple[torch.Tensor, torch.Tensor], batch) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE on the IoU targets and BCE on the detection targets."""
    predicted_iou, predicted_detection = predicted
    return (F.mse_loss(predicted_iou, batch[2]),
            F.binary_cross_entropy(predicted_detection.clamp(1e-7, 1 - 1e-7), batch[3]))


@torch.no_grad()
def validate(model: nn.Module, rows: EvalNetRows, batch_size: int, device: torch.device, precision: str
             ) -> dict[str, float]:
    """Validation figures: total, IoU and detection losses, IoU mean absolute error, detection accuracy."""
    model.eval()
    sums = dict(iou_loss=0.0, detection_loss=0.0, iou_mae=0.0, detection_accuracy=0.0)
    for start in range(0, len(rows), batch_size):
        indices = np.arange(start, min(start + batch_size, len(rows)))
        batch = _batch(rows, indices, device)
        predicted_iou, predicted_detection = predicted = _predict(model, batch, precision, device)
        iou_loss, detection_loss = _loss_terms(predicted, batch)
        sums["iou_loss"] += float(iou_loss) * len(indices)
        sums["detection_loss"] += float(detection_loss) * len(indices)
        sums["iou_mae"] += float((predicted_iou - batch[2]).abs().mean()) * len(indices)
        sums["detection_accuracy"] += float(((predicted_detection >= 0.5) == (batch[3] >= 0.5)).float()
                                            .mean()) * len(indices)
    result = {name: value / max(1, len(rows)) for name, value in sums.items()}
    result["total_loss"] = result["iou_loss"] + result["detection_loss"]
    return result


def train_evalnet(rows: EvalNetRows, val_rows: EvalNetRows, config: TrainConfig, epochs: int, seed: int,
                  checkpoint: Path, device: torch.device) -> tuple[dict, dict[str, float], int]:
    """Train one EvalNet (MSE on IoU + BCE on detection, the study's AdamW, batch 32, rows // 32 steps per epoch)
    and keep the epoch with the lowest validation loss. Resumes from ``checkpoint``. Returns (best weights, best
    validation figures, epochs run)."""
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(seed)
    model = EvalNet(rows.iou.shape[1]).to(device).to(memory_format=torch.channels_last)
    optimizer = DecoupledAdamW(model.parameters(), lr=config.lr, decay=config.weight_decay, eps=config.adam_eps,
                               keras_epsilon=True)  # the study's Keras optimizer
    steps = max(1, len(rows) // config.batch_size)
    stream = BatchStream(len(rows), config.batch_size, seed)
    epoch, best, best_state = 0, {"total_loss": math.inf}, None
    if checkpoint.exists():
        saved = load_checkpoint(checkpoint, map_location=device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        epoch, best, best_state = saved["epoch"], saved["best"], saved["best_state"]
    while epoch < epochs:
        model.train()
        for step in range(epoch * steps, (epoch + 1) * steps):
            batch = _batch(rows, stream.batch(step), device)
            iou_loss, detection_loss = _loss_terms(_predict(model, batch, precision, device), batch)
            loss = iou_loss + detection_loss
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"the EvalNet loss became {float(loss)} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        figures = validate(model, val_rows, config.eval_batch_size, device, precision)
        if figures["total_loss"] < best["total_loss"]:
            best, best_state = figures, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        epoch += 1
        save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "epoch": epoch, "best": best, "best_state": best_state})
    return best_state, best, epoch


def load_evalnet(path: Path, device: torch.device) -> nn.Module:
    saved = load_checkpoint(path, map_location="cpu")
    model = EvalNet(saved["num_classes"])
    model.load_state_dict(saved["state_dict"])
    return model.to(device).to(memory_format=torch.channels_last).eval()


@torch.no_grad()
def ensemble_outputs(evalnets: list[nn.Module], images: np.ndarray, masks: np.ndarray, device: torch.device,
                     precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean (iou, detection) of several EvalNets for a batch of images (B, H, W, 3) and masks (B, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)
    m = torch.from_numpy(np.asarray(masks).astype(np.int64)).to(device)
    ious, detections = [], []
    for net in evalnets:
        with autocast(precision, device):
            iou, detection = net(x, m)
        ious.append(iou.float())
        detections.append(detection.float())
    return torch.stack(ious).mean(0).cpu().numpy(), torch.stack(detections).mean(0).cpu().numpy()


def score_masks(evalnets: list[nn.Module], images, masks, batch_size: int, device: torch.device, precision: str,
                classes: slice = slice(None)) -> np.ndarray:
    """The EvalNet ensemble's score (``rules.evalnet_score``) of every (image, mask) pair, shape (N,)."""
    scores = np.empty(len(masks), dtype=np.float64)
    for start in range(0, len(masks), batch_size):
        rows = slice(start, min(start + batch_size, len(masks)))
        iou, detection = ensemble_outputs(evalnets, np.asarray(images[rows]), np.asarray(masks[rows]), device,
                                          precision)
        scores[rows] = [evalnet_score(i, d, classes) for i, d in zip(iou, detection)]
    return scores
