"""Online augmentation for the standard protocol, on tensors of whatever device the batch is on (the GPU when
training there, so that loading never starves it): random rescaling, random crop, horizontal flip, photometric
jitter. Images stay uint8 until here; labels are trainIds with 255 ignored."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..config import OnlineAugmentConfig
from ..labels import IGNORE_INDEX


def _jitter(image: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1 - amount, 1 + amount] on a (3, H, W) image in [0, 1]."""
    if amount == 0:
        return image
    factors = 1 + (torch.rand(3, generator=generator, device=generator.device) * 2 - 1) * amount
    image = image * factors[0]
    mean = image.mean()
    image = (image - mean) * factors[1] + mean
    grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)
    return ((image - grey) * factors[2] + grey).clamp(0, 1)


def augment_batch(images: torch.Tensor, labels: torch.Tensor, params: OnlineAugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, H, W) uint8, labels (B, H, W) int64 -> (B, 3, h, w) float in [0, 1] and (B, h, w) int64,
    (h, w) = ``params.crop``. Every random draw comes from ``generator`` (on the batch's device)."""
    crop_h, crop_w = params.crop
    out_images, out_labels = [], []
    for image, label in zip(images, labels):
        scale = float(params.scale[0] + (params.scale[1] - params.scale[0]) *
                      torch.rand((), generator=generator, device=generator.device))
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[2] * scale)))
        x = F.interpolate(image[None].float() / 255, size=size, mode="bilinear", align_corners=False)[0]
        y = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        pad_h, pad_w = max(0, crop_h - size[0]), max(0, crop_w - size[1])
        if pad_h or pad_w:  # pad with black and with the ignore label, never with a class
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
            y = F.pad(y, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        top = int(torch.randint(0, x.shape[1] - crop_h + 1, (), generator=generator, device=generator.device))
        left = int(torch.randint(0, x.shape[2] - crop_w + 1, (), generator=generator, device=generator.device))
        x, y = x[:, top:top + crop_h, left:left + crop_w], y[top:top + crop_h, left:left + crop_w]
        if params.flip and bool(torch.rand((), generator=generator, device=generator.device) < 0.5):
            x, y = x.flip(-1), y.flip(-1)
        out_images.append(_jitter(x, params.jitter, generator))
        out_labels.append(y)
    return torch.stack(out_images), torch.stack(out_labels)
