"""The Inconsistency-Masks study's U-Net (paper-protocol notes 2.1 and 2.3), in PyTorch.

Every convolution has a bias and a ReLU; BatchNorm comes *after* the activation; skips are added, not
concatenated; widths are ``int(base * alpha)``. It follows the registry's input contract: uint8 RGB is scaled by
1/255 inside (as the study), float input is taken as already in [0, 1].
Initialisation and BatchNorm settings follow Keras: truncated He-normal weights, zero biases, eps 1e-3,
momentum 0.99 (PyTorch 0.01). At alpha 1 and 35 classes the network has 680,755 trainable parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .recompute import BatchNorm2d, checkpointed

BASE_WIDTHS = (16, 32, 64, 128, 256)
KERAS_BN = {"eps": 1e-3, "momentum": 0.01}


def keras_he_normal_(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keras ``he_normal``: a normal truncated at 2 standard deviations, rescaled so that the truncated
    distribution's std is sqrt(2 / fan_in) (the 0.8796 factor is the std of a unit normal truncated at +-2)."""
    fan_in = weight[0].numel()
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std, generator=generator)


class _UpsampleAdd(torch.autograd.Function):
    """``F.interpolate(low, scale_factor=2) + skip`` (nearest) in one pass: ``low`` is read through a broadcast
    view, so the upsampled tensor is never written; the backward pass is nearest upsampling's own."""

    @staticmethod
    def forward(ctx, low: torch.Tensor, skip: torch.Tensor, channels_last: bool) -> torch.Tensor:
        n, c, h, w = low.shape
        ctx.shape = low.shape
        if channels_last:  # memory (N, H, W, C): split H and W of the skip into (h, 2) and (w, 2)
            out = skip.permute(0, 2, 3, 1).view(n, h, 2, w, 2, c) + low.permute(0, 2, 3, 1)[:, :, None, :, None]
            return out.view(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
        out = skip.view(n, c, h, 2, w, 2) + low[:, :, :, None, :, None]
        return out.view(n, c, 2 * h, 2 * w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        n, c, h, w = ctx.shape
        grad_low = torch.ops.aten.upsample_nearest2d_backward(grad, [2 * h, 2 * w], [n, c, h, w], 2.0, 2.0)
        return grad_low, grad, None


def upsample_add(low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Nearest x2 upsampling of ``low`` plus ``skip`` (Keras ``UpSampling2D`` then ``add``)."""
    n, c, h, w = low.shape
    if skip.shape == (n, c, 2 * h, 2 * w) and low.dtype == skip.dtype:
        for layout in (torch.channels_last, torch.contiguous_format):
            if low.is_contiguous(memory_format=layout) and skip.is_contiguous(memory_format=layout):
                return _UpsampleAdd.apply(low, skip, layout is torch.channels_last)
    return F.interpolate(low, scale_factor=2.0) + skip


class ConvReLU(nn.Sequential):
    """Conv (bias, 'same' padding) followed by ReLU, as Keras Conv2D(activation='relu')."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU(inplace=True))


class Block(nn.Sequential):
    """3x3 conv + ReLU, 1x1 conv + ReLU, BatchNorm: the unit every encoder and decoder stage is made of."""

    def __init__(self, c_in: int, c_mid: int, c_out: int):
        super().__init__(ConvReLU(c_in, c_mid, 3), ConvReLU(c_mid, c_out, 1), BatchNorm2d(c_out, **KERAS_BN))


class UNetPaper(nn.Module):
    """The study's U-Net. Input (N, 3, H, W) uint8 or float in [0, 1] (H, W divisible by 16); output logits
    (N, num_classes, H, W) float32 (softmax is applied by the loss and the metrics).

    ``recompute = True`` (set by the trainer) keeps only the stage boundaries during training and recomputes the
    stages in the backward pass: the same result with about half the memory, for some 10% more time.
    """

    recompute: bool = False

    def __init__(self, num_classes: int = 35, alpha: float = 1.0, in_channels: int = 3):
        super().__init__()
        w1, w2, w3, w4, w5 = (int(base * alpha) for base in BASE_WIDTHS)
        self.num_classes, self.alpha = num_classes, alpha
        self.stem = nn.Sequential(ConvReLU(in_channels, w1, 1), BatchNorm2d(w1, **KERAS_BN))
        self.encoder = nn.ModuleList([Block(w1, w1, w1), Block(w1, w2, w2), Block(w2, w3, w3), Block(w3, w4, w4)])
        self.bottleneck = Block(w4, w5, w4)
        # decoder stage: 1x1 conv + ReLU + BN on the sum, then a Block that narrows to the next skip's width
        self.merge = nn.ModuleList([nn.Sequential(ConvReLU(c, c, 1), BatchNorm2d(c, **KERAS_BN))
                                    for c in (w4, w3, w2, w1)])
        self.decoder = nn.ModuleList([Block(w4, w4, w3), Block(w3, w3, w2), Block(w2, w2, w1), Block(w1, w1, w1)])
        self.head = nn.Conv2d(w1, num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Keras initialisation: truncated He-normal kernels, zero biases, BatchNorm gamma 1 and beta 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                keras_he_normal_(module.weight, generator)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        recompute = self.recompute and self.training and torch.is_grad_enabled()
        stage = checkpointed if recompute else (lambda fn, *inputs: fn(*inputs))
        # The registry contract: uint8, or float already in [0, 1]. The study's /255 stays inside (uint8 input,
        # as the study trains, gives the same numbers as before).
        # uint8 -> float32 and the scaling in one pass (the same numbers as images.float() * (1 / 255))
        x = torch.mul(images, 1.0 / 255.0) if images.dtype == torch.uint8 else images.float()
        skips = [stage(lambda a: self.encoder[0](self.stem(a)), x)]
        for block in self.encoder[1:]:
            skips.append(stage(lambda a, block=block: block(F.max_pool2d(a, 2)), skips[-1]))
        x = self.bottleneck(F.max_pool2d(skips[-1], 2))
        for merge, block, skip in zip(self.merge, self.decoder, reversed(skips)):
            x = stage(lambda a, s, merge=merge, block=block: block(merge(upsample_add(a, s))),
                      x, skip)
        return self.head(x).float()
