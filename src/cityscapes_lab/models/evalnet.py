"""The study's EvalNet (notes 5.8): from an image and a candidate mask, predict the mask's IoU per class and
whether each class is present. Two branches (RGB image, one-hot mask), five convolution blocks, global average
pooling, two sigmoid heads. About 2.0 M parameters at alpha 2 (1,998,598 in Keras' count)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .recompute import BatchNorm2d, checkpointed
from .unet import KERAS_BN, ConvReLU, keras_he_normal_


class _Pool(nn.Module):
    """2x2 max pooling (floor, as Keras' 'valid'), skipped once the map is down to a single row or column, so
    that images smaller than the study's 416x208 still reach the global pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 2) if min(x.shape[-2:]) >= 2 else x


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(ConvReLU(c_in, c_out, 3), ConvReLU(c_out, c_out, 1), BatchNorm2d(c_out, **KERAS_BN), _Pool())


def _branch(c_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(ConvReLU(c_in, width, 1), BatchNorm2d(width, **KERAS_BN), _block(width, width))


class EvalNet(nn.Module):
    """Input: images (N, 3, H, W) uint8 or float 0..255 and masks (N, H, W) class indices. Output: (iou, detection),
    each (N, num_classes) in [0, 1]. ``recompute = True`` (set by the trainer) reruns the branches and blocks in
    the backward pass instead of keeping their activations (the same result with less memory)."""

    recompute: bool = False

    def __init__(self, num_classes: int = 35, alpha: float = 2.0):
        super().__init__()
        width = int(16 * alpha)
        self.num_classes = num_classes
        self.image_branch = _branch(3, width)
        self.mask_branch = _branch(num_classes, width)
        widths = [2 * width, width, 2 * width, 4 * width, 8 * width, 16 * width]
        self.body = nn.Sequential(*[_block(a, b) for a, b in zip(widths, widths[1:])])
        self.iou_head = nn.Linear(widths[-1], num_classes)
        self.detection_head = nn.Linear(widths[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                keras_he_normal_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):  # Keras' glorot_uniform
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stage = checkpointed if self.recompute and self.training and torch.is_grad_enabled() else (
            lambda fn, *inputs: fn(*inputs))
        one_hot = F.one_hot(masks.long(), self.num_classes).permute(0, 3, 1, 2).to(torch.float32)
        x = torch.cat([stage(self.image_branch, images.float() * (1.0 / 255.0)), stage(self.mask_branch, one_hot)],
                      dim=1)
        for block in self.body:
            x = stage(block, x)
        features = x.mean(dim=(2, 3))
        return torch.sigmoid(self.iou_head(features).float()), torch.sigmoid(self.detection_head(features).float())
