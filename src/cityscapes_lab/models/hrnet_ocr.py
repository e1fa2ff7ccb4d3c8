"""HRNetV2-W48 with the OCR (object-contextual representations) head, in plain PyTorch.

Module names follow the official HRNet-Semantic-Segmentation code (branch HRNet-OCR), so the released
Cityscapes checkpoints (``hrnet_ocr_cs_8162_torch11.pth``, the trainval one) load once ``model.`` is stripped.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import Bottleneck

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLOCKS_PER_BRANCH = 4
MODULES_PER_STAGE = (1, 4, 3)  # stages 2, 3 and 4
OCR_DROPOUT = 0.05


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with align_corners=True, as everywhere in the official model (config ALIGN_CORNERS)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Bias-free conv, BatchNorm and optionally ReLU; the checkpoint names them ``.0`` and ``.1``."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def bn_relu(channels: int) -> nn.Sequential:
    """BatchNorm + ReLU as one nested module: why the OCR head's keys read ``f_pixel.1.0.weight``."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut (every branch keeps its width, so no projection is needed)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + x, inplace=True)


def downsampler(c_in: int, c_out: int, steps: int, last_relu: bool) -> nn.Sequential:
    """``steps`` stride-2 3x3 conv+BN units; intermediate ones keep ``c_in`` channels and end in ReLU, the
    last one maps to ``c_out`` (no ReLU inside a fusion, where the sum is activated instead)."""
    units = [conv_bn(c_in, c_in, stride=2) for _ in range(steps - 1)]
    return nn.Sequential(*units, conv_bn(c_in, c_out, stride=2, relu=last_relu))


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks followed by an all-to-all SUM fusion.

    ``fuse_layers[i][j]`` brings branch ``j`` to branch ``i``: a 1x1 conv+BN then a bilinear upsampling for
    a lower-resolution source (j > i), a chain of stride-2 convs for a higher-resolution one (j < i), and
    nothing for the branch itself (an Identity: no weights, so no checkpoint keys).
    """

    def __init__(self, widths: list[int]):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*(BasicBlock(w) for _ in range(BLOCKS_PER_BRANCH)))
                                      for w in widths)
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(conv_bn(widths[j], widths[i], kernel=1, relu=False) if j > i
                          else nn.Identity() if j == i
                          else downsampler(widths[j], widths[i], i - j, last_relu=False)
                          for j in range(len(widths)))
            for i in range(len(widths)))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for i, layers in enumerate(self.fuse_layers):
            target = xs[i].shape[-2:]
            total = None
            for j, (layer, x) in enumerate(zip(layers, xs)):  # summed from branch 0 upwards, as upstream
                y = layer(x)
                y = resize(y, target) if j > i else y
                total = y if total is None else total + y
            fused.append(F.relu(total))
        return fused


class Transition(nn.ModuleList):
    """Between stages: re-width each existing branch with a 3x3 conv when its width changes (only after
    stage 1) and open one new branch from the lowest-resolution one with a stride-2 conv."""

    def __init__(self, c_prev: list[int], c_next: list[int]):
        layers = []
        for i, c in enumerate(c_next):
            if i < len(c_prev):
                layers.append(conv_bn(c_prev[i], c) if c != c_prev[i] else nn.Identity())
            else:
                layers.append(downsampler(c_prev[-1], c, i + 1 - len(c_prev), last_relu=True))
        super().__init__(layers)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [layer(xs[min(i, len(xs) - 1)]) for i, layer in enumerate(self)]


class SpatialGather(nn.Module):
    """Object-region descriptors: each class's soft mask (softmax of the coarse logits over all pixels)
    weights the pixel features. Returns (N, C, K, 1). No parameters."""

    def forward(self, feats: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits.flatten(2), dim=2)  # N x K x HW
        regions = torch.matmul(probs, feats.flatten(2).transpose(1, 2))  # N x K x C
        return regions.transpose(1, 2).unsqueeze(3)


class ObjectAttention(nn.Module):
    """Pixel-to-region attention: pixels are queries, the K region descriptors keys and values (scale 1)."""

    def __init__(self, channels: int, key_channels: int):
        super().__init__()
        self.key_channels = key_channels
        def project(c_in: int, c_out: int) -> list[nn.Module]:  # bias-free 1x1 conv, then (BN, ReLU)
            return [nn.Conv2d(c_in, c_out, 1, bias=False), bn_relu(c_out)]

        self.f_pixel = nn.Sequential(*project(channels, key_channels), *project(key_channels, key_channels))
        self.f_object = nn.Sequential(*project(channels, key_channels), *project(key_channels, key_channels))
        self.f_down = nn.Sequential(*project(channels, key_channels))
        self.f_up = nn.Sequential(*project(key_channels, channels))

    def forward(self, feats: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        n, _, h, w = feats.shape
        query = self.f_pixel(feats).flatten(2).transpose(1, 2)  # N x HW x Ck
        key = self.f_object(regions).flatten(2)  # N x Ck x K
        value = self.f_down(regions).flatten(2).transpose(1, 2)  # N x K x Ck
        attention = F.softmax(torch.matmul(query, key) * self.key_channels ** -0.5, dim=-1)
        context = torch.matmul(attention, value).transpose(1, 2).reshape(n, self.key_channels, h, w)
        return self.f_up(context)


class SpatialOCR(nn.Module):
    """Augments each pixel with its object context: concat(context, feats) -> 1x1 conv+BN+ReLU -> dropout."""

    def __init__(self, channels: int, key_channels: int, dropout: float = OCR_DROPOUT):
        super().__init__()
        self.object_context_block = ObjectAttention(channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False),
                                             bn_relu(channels), nn.Dropout2d(dropout))

    def forward(self, feats: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        return self.conv_bn_dropout(torch.cat([self.object_context_block(feats, regions), feats], 1))


class HRNetOCR(nn.Module):
    """HRNetV2 + OCR. Input (N, 3, H, W) RGB, uint8 or float in [0, 1]; output logits (N, num_classes, H, W)
    float32, or ``(main, aux)`` with ``return_aux=True`` (the auxiliary soft-region logits, trained with
    weight 0.4 upstream). Both are predicted at 1/4 resolution and upsampled bilinearly, align_corners=True.

    The defaults are the published HRNet-W48 + OCR (70,372,678 parameters); a smaller ``width`` etc. keeps
    the same layout and key names.
    """

    def __init__(self, num_classes: int = 19, width: int = 48, stem_channels: int = 64,
                 ocr_mid_channels: int = 512, ocr_key_channels: int = 256):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # stem: two stride-2 convs bring the image to 1/4, where the highest-resolution branch lives
        self.conv1 = nn.Conv2d(3, stem_channels, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.conv2 = nn.Conv2d(stem_channels, stem_channels, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem_channels)
        stage1_out = stem_channels * Bottleneck.expansion
        self.layer1 = nn.Sequential(Bottleneck(stem_channels, stem_channels),
                                    *(Bottleneck(stage1_out, stem_channels) for _ in range(3)))
        widths = [width * 2 ** i for i in range(4)]
        previous = [stage1_out]
        for stage, modules in enumerate(MODULES_PER_STAGE, start=2):
            current = widths[:stage]
            setattr(self, f"transition{stage - 1}", Transition(previous, current))
            hr_modules = (HighResolutionModule(current) for _ in range(modules))
            setattr(self, f"stage{stage}", nn.Sequential(*hr_modules))
            previous = current
        concat = sum(widths)  # 720 at width 48
        self.conv3x3_ocr = nn.Sequential(nn.Conv2d(concat, ocr_mid_channels, 3, padding=1),
                                         nn.BatchNorm2d(ocr_mid_channels), nn.ReLU(inplace=True))
        self.ocr_gather_head = SpatialGather()
        self.ocr_distri_head = SpatialOCR(ocr_mid_channels, ocr_key_channels)
        self.cls_head = nn.Conv2d(ocr_mid_channels, num_classes, 1)
        self.aux_head = nn.Sequential(nn.Conv2d(concat, concat, 1), nn.BatchNorm2d(concat),
                                      nn.ReLU(inplace=True), nn.Conv2d(concat, num_classes, 1))

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> the four branches upsampled to 1/4 resolution and concatenated."""
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        xs = [self.layer1(x)]
        for stage in range(2, 5):
            xs = getattr(self, f"stage{stage}")(getattr(self, f"transition{stage - 1}")(xs))
        size = xs[0].shape[-2:]
        return torch.cat([xs[0]] + [resize(x, size) for x in xs[1:]], 1)

    def forward(self, images: torch.Tensor, return_aux: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = (x - self.mean) / self.std
        feats = self.backbone(x)
        aux = self.aux_head(feats)  # coarse logits: the soft object regions
        feats = self.conv3x3_ocr(feats)
        feats = self.ocr_distri_head(feats, self.ocr_gather_head(feats, aux))
        size = images.shape[-2:]
        main = resize(self.cls_head(feats), size).float()
        return (main, resize(aux, size).float()) if return_aux else main


def hrnet_w48_ocr(num_classes: int = 19, **options) -> HRNetOCR:
    """The published HRNet-W48 + OCR (Cityscapes checkpoints ``hrnet_ocr_cs_8162_torch11.pth`` and
    ``hrnet_ocr_cs_trainval_8227_torch11.pth``); ``options`` override the constructor's defaults."""
    return HRNetOCR(num_classes=num_classes, **{"width": 48, "stem_channels": 64, "ocr_mid_channels": 512,
                                                "ocr_key_channels": 256, **options})
