"""UperNet + InternImage as released by OpenGVLab for Cityscapes: mmsegmentation's UPerHead (with its pyramid
pooling module) and FCN auxiliary head, laid out so that the state_dict keys are the checkpoints'."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .internimage import InternImage

MEAN = (123.675, 116.28, 103.53)  # mmseg's ImageNet statistics on 0..255 RGB
STD = (58.395, 57.12, 57.375)

_COMMON = dict(mlp_ratio=4.0, norm_layer="LN", layer_scale=1.0, offset_scale=2.0, post_norm=True)
# backbone and head widths of the released configurations; "tiny-test" keeps their structure, not their size
SIZES = {
    "l": dict(channels=160, depths=(5, 5, 22, 5), groups=(10, 20, 40, 80),
              head_channels=512, aux_channels=256),
    "xl": dict(channels=192, depths=(5, 5, 24, 5), groups=(12, 24, 48, 96),
               head_channels=512, aux_channels=256),
    "tiny-test": dict(channels=16, depths=(1, 1, 2, 1), groups=(1, 2, 4, 8),
                      head_channels=16, aux_channels=8),
}
HEAD_OPTIONS = {"head_channels", "aux_channels", "pool_scales", "dropout_ratio", "aux_in_index",
                "aux_num_convs", "aux_concat_input"}


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvModule(nn.Sequential):
    """mmcv's ConvModule as configured here: conv (no bias), BatchNorm, ReLU; keys ``conv.*``, ``bn.*``."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__(OrderedDict(conv=nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
                                     bn=nn.BatchNorm2d(c_out), activate=nn.ReLU(inplace=True)))


class PPM(nn.ModuleList):
    """Pyramid pooling: average-pool to each scale, 1x1 ConvModule, upsample back to the input size."""

    def __init__(self, pool_scales: Sequence[int], c_in: int, channels: int):
        super().__init__([nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(c_in, channels, 1))
                          for s in pool_scales])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_resize(branch(x), x.shape[2:]) for branch in self]


class SegHead(nn.Module):
    """What mmseg's decode heads share: Dropout2d then a 1x1 classifier ``conv_seg`` (with bias)."""

    def __init__(self, channels: int, num_classes: int, dropout_ratio: float):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UPerHead(SegHead):
    """UPerNet head: PPM on the deepest map, a top-down FPN over all maps, fused maps classified at 1/4."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout_ratio: float = 0.1):
        super().__init__(channels, num_classes, dropout_ratio)
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList([ConvModule(c, channels, 1) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvModule(channels, channels, 3) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        top = features[-1]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        laterals.append(self.bottleneck(torch.cat([top, *self.psp_modules(top)], 1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each map gets the upsampled coarser one added
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        outs = [outs[0]] + [_resize(x, outs[0].shape[2:]) for x in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, 1)))


class FCNHead(SegHead):
    """mmseg's FCN head on one backbone map: ``num_convs`` 3x3 ConvModules (optionally concatenated with the
    input through ``conv_cat``), then the classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, in_index: int = 2,
                 num_convs: int = 1, concat_input: bool = False, dropout_ratio: float = 0.1):
        super().__init__(channels, num_classes, dropout_ratio)
        self.in_index = in_index
        if num_convs == 0:  # mmseg then passes the input through unchanged
            if in_channels != channels:
                raise ValueError("an FCN head without convs needs in_channels == channels")
            self.convs = nn.Identity()
        else:
            self.convs = nn.Sequential(*[ConvModule(in_channels if i == 0 else channels, channels, 3)
                                         for i in range(num_convs)])
        self.conv_cat = ConvModule(in_channels + channels, channels, 3) if concat_input else None

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[self.in_index]
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], 1))
        return self.cls_seg(out)


class UperNetInternImage(nn.Module):
    """UperNet + InternImage. Input RGB (N, 3, H, W), uint8 or float in [0, 1]; output logits (N, num_classes,
    H, W) float32, upsampled bilinearly from 1/4 (``return_aux``: also the FCN head's logits on stage 3).

    ``size`` picks a released configuration ("l", "xl") or "tiny-test"; ``overrides`` change any InternImage
    option (``channels``, ``depths``, ``groups``, ``layer_scale``, ...) or head option (``head_channels``,
    ``aux_channels``, ``pool_scales``, ``dropout_ratio``, ``aux_in_index``, ``aux_num_convs``,
    ``aux_concat_input``). The released checkpoints have 150-class heads (an ADE20K leftover).
    """

    def __init__(self, num_classes: int = 19, size: str = "l", **overrides):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
        options = {**_COMMON, **SIZES[size], **overrides}
        head = {key: options.pop(key) for key in HEAD_OPTIONS if key in options}
        self.num_classes, self.size = num_classes, size
        self.backbone = InternImage(**options)
        in_channels = self.backbone.num_features
        self.decode_head = UPerHead(in_channels, head["head_channels"], num_classes,
                                    head.get("pool_scales", (1, 2, 3, 6)), head.get("dropout_ratio", 0.1))
        aux_index = head.get("aux_in_index", 2)
        self.auxiliary_head = FCNHead(in_channels[aux_index], head["aux_channels"], num_classes, aux_index,
                                      head.get("aux_num_convs", 1), head.get("aux_concat_input", False),
                                      head.get("dropout_ratio", 0.1))
        # on the [0, 1] scale, so that uint8 / 255 and the same image given as float normalise identically
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) / 255, persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) / 255, persistent=False)

    @property
    def recompute(self) -> bool:
        """Recompute the backbone's blocks in the backward pass (set by the trainer to save memory)."""
        return self.backbone.recompute

    @recompute.setter
    def recompute(self, value: bool) -> None:
        self.backbone.recompute = value

    def forward(self, images: torch.Tensor, return_aux: bool = False):
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        features = self.backbone((x - self.mean) / self.std)
        main = _resize(self.decode_head(features), images.shape[2:]).float()
        if not return_aux:
            return main
        return main, _resize(self.auxiliary_head(features), images.shape[2:]).float()


def upernet_internimage_l(num_classes: int = 19, **options) -> UperNetInternImage:
    """UperNet + InternImage-L as in ``upernet_internimage_l_512x1024_160k_cityscapes`` (``size`` may still be
    overridden, e.g. "tiny-test")."""
    return UperNetInternImage(num_classes, **{"size": "l", **options})


def upernet_internimage_xl(num_classes: int = 19, **options) -> UperNetInternImage:
    """UperNet + InternImage-XL as in ``upernet_internimage_xl_512x1024_160k_mapillary2cityscapes``."""
    return UperNetInternImage(num_classes, **{"size": "xl", **options})
