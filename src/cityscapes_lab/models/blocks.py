"""Building blocks shared by the zoo's networks: the ResNet bottleneck and stochastic depth."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Bottleneck(nn.Module):
    """ResNet's 1x1 - 3x3 (stride, dilation) - 1x1 block expanding ``planes`` 4x, plus a shortcut: a strided 1x1
    projection (``downsample.0`` conv, ``.1`` norm) where the resolution or width changes. Key names as in the
    published ResNet, HRNet and DeepLabV3+ checkpoints (``conv1``/``bn1`` ... ``conv3``/``bn3``)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, dilation: int = 1,
                 norm: type[nn.Module] = nn.BatchNorm2d):
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = norm(c_out)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm(c_out))
                           if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut, inplace=True)


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for a whole sample with probability ``p`` (and
    scale the kept ones by 1/(1-p)); the identity in evaluation (SegFormer, InternImage)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)
