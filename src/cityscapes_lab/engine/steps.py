"""Step functions of the training loop: the loss of one batch. The forward pass runs under the runtime's autocast;
every loss is computed in fp32.

===================  =============================================================================
step                 loss
===================  =============================================================================
``CrossEntropy``     pixel cross-entropy (35 paper indices, or 19 trainIds with 255 ignored), or its OHEM
                     form (the hard pixels only), plus ``aux_weight`` x the auxiliary head's for networks
                     that have one (HRNet-OCR, UperNet)
``Consistency``      mean squared difference of the softmax outputs of two views of the same images
``EvalNetLoss``      MSE on the per-class IoU targets + BCE on the per-class detection targets
===================  =============================================================================
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .losses import ohem_cross_entropy, pixel_cross_entropy
from .runtime import Runtime
from .sources import Batch


def has_aux_head(model: nn.Module) -> bool:
    """Whether the network can return its auxiliary head's logits (``forward(images, return_aux=True)``)."""
    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return "return_aux" in inspect.signature(model.forward).parameters


@dataclass(frozen=True)
class CrossEntropy:
    ignore_index: int | None = None
    aux_weight: float = 0.0  # > 0: the model's auxiliary head adds its weighted loss
    ohem: tuple[float, int] | None = None  # (threshold, min_kept): only the hard pixels count

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.ohem is None:
            return pixel_cross_entropy(logits.float(), labels, self.ignore_index)
        return ohem_cross_entropy(logits, labels, self.ignore_index, *self.ohem)

    def __call__(self, model: nn.Module, batch: Batch, runtime: Runtime) -> torch.Tensor:
        images, labels = batch
        with runtime.autocast():
            outputs = model(images, return_aux=True) if self.aux_weight > 0 else model(images)
        if isinstance(outputs, tuple):
            main, aux = outputs
            return self.loss(main, labels) + self.aux_weight * self.loss(aux, labels)
        return self.loss(outputs, labels)


def consistency_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean over images, pixels and classes of the squared difference of the two views' softmax outputs."""
    return (torch.softmax(logits_a.float(), dim=1) - torch.softmax(logits_b.float(), dim=1)).pow(2).mean()


@dataclass(frozen=True)
class Consistency:
    def __call__(self, model: nn.Module, batch: Batch, runtime: Runtime) -> torch.Tensor:
        view_a, view_b = batch
        with runtime.autocast():
            logits_a, logits_b = model(view_a), model(view_b)
        return consistency_loss(logits_a, logits_b)


def evalnet_outputs(model: nn.Module, batch: Batch, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of an EvalNet: predicted (IoU, detection), each (B, C) float32."""
    with runtime.autocast():
        iou, detection = model(batch[0], batch[1])
    return iou.float(), detection.float()


def evalnet_loss_terms(predicted: tuple[torch.Tensor, torch.Tensor], batch: Batch
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE on the IoU targets and BCE on the detection targets. A network whose outputs became NaN gets a NaN
    loss (for the NaN check), not the error ``binary_cross_entropy`` raises for them."""
    predicted_iou, predicted_detection = predicted
    detection = predicted_detection.clamp(1e-7, 1 - 1e-7)
    bce = F.binary_cross_entropy(detection.nan_to_num(0.5), batch[3]) + 0 * detection.sum()  # NaN stays NaN
    return F.mse_loss(predicted_iou, batch[2]), bce


@dataclass(frozen=True)
class EvalNetLoss:
    def __call__(self, model: nn.Module, batch: Batch, runtime: Runtime) -> torch.Tensor:
        iou_loss, detection_loss = evalnet_loss_terms(evalnet_outputs(model, batch, runtime), batch)
        return iou_loss + detection_loss
