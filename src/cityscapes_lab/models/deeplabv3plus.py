"""DeepLabV3+ with a ResNet-50/101 encoder, in plain PyTorch: the network of the semi-supervised Cityscapes
literature (UniMatch, U2PL, CPS), written after UniMatch's ``model/semseg/deeplabv3plus.py`` and
``model/backbone/resnet.py`` so that its files load by name.

Encoder: a ResNet of bottleneck blocks (3-4-6-3 or 3-4-23-3), the stride on each block's 3x3 convolution
(ResNet v1.5, as torchvision), with one of two stems:

- ``stem="deep"`` (UniMatch/U2PL/CPS, the ImageNet files ``resnet50.pth`` / ``resnet101.pth`` they use): three
  3x3 convolutions 64-64-128 (stride 2 on the first) held in one Sequential ``conv1`` (keys ``conv1.0``,
  ``conv1.1``, ``conv1.3``, ``conv1.4``, ``conv1.6``), the third one's BatchNorm outside it as ``bn1``, ReLU,
  3x3 max-pool; ``layer1`` then starts from 128 channels;
- ``stem="plain"`` (torchvision's ResNet, ``resnet50-0676ba61.pth`` ...): one 7x7 convolution 64 (``conv1``),
  ``bn1``, ReLU, max-pool.

Output stride 16: ``layer4`` keeps its input's resolution; as in UniMatch's (and torchvision's)
``replace_stride_with_dilation``, its first block runs its 3x3 convolution undilated (dilation 1, stride 1: the
dilation the layer *had*) and only the following blocks are dilated by 2. Output stride 8 (dilating layer3 by 2
and layer4 by 4 the same way) is available for the configurations of other datasets.

Head (UniMatch's, no dropout anywhere in it): ASPP on layer4's output (``head``: a 1x1 branch ``b0``, 3x3
atrous branches ``b1..b3`` at rates 6/12/18, an image-pooling branch ``b4.gap``, each conv+BN+ReLU with
in_channels/8 = 256 outputs; concatenated and projected by a 1x1 conv+BN+ReLU), bilinearly upsampled
(align_corners=True) to layer1's resolution; layer1's output reduced to 48 channels (``reduce``); both
concatenated and fused by two 3x3 conv+BN+ReLU (``fuse``, 256 channels); a 1x1 ``classifier`` with bias; the
logits upsampled to the input (bilinear, align_corners=True). UniMatch's feature perturbation (``need_fp``:
Dropout2d(0.5) on layer1's and layer4's outputs in a doubled batch) is a training method, not part of the
network: ``features`` and ``decode`` expose the two halves so that a semi-supervised step can apply it.

Input: RGB uint8 0..255 or float in [0, 1], normalised here with ImageNet's mean and std, as UniMatch's data
pipeline does (``ToTensor`` then ``Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])``).

Loading: the released UniMatch Cityscapes checkpoints are ``{"model", "optimizer", "epoch", "previous_best"}``
saved under DistributedDataParallel (``module.`` before every key): layout ``unimatch`` in
``models.checkpoints``. ImageNet backbone files load into ``model.backbone`` only (``load_backbone``, or the
builders' ``backbone_weights=PATH``), layout ``resnet_imagenet`` (the ``fc.*`` classifier dropped), each checked
key by key against the stem the model was built with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, DataError  # ConfigError: an option out of range (one line)
from .blocks import Bottleneck
from .recompute import BatchNorm2d, checkpointed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEPTHS = {"r50": (3, 4, 6, 3), "r101": (3, 4, 23, 3)}
ASPP_RATES = (6, 12, 18)  # UniMatch's configs/cityscapes.yaml "dilations"
STEMS = ("deep", "plain")
HEAD_INITS = ("pytorch", "kaiming")
EXPANSION = Bottleneck.expansion  # bottleneck output = 4 x its width


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, align_corners=True: UniMatch's upsampling of the ASPP output and of the logits."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """Bias-free conv ("same" padding, optionally atrous), BatchNorm, ReLU: keys ``.0`` and ``.1``."""
    padding = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def layer_dilations(output_stride: int) -> tuple[tuple[int, int, int], ...]:
    """(stride, first block's dilation, other blocks' dilation) of layer1..layer4 for an output stride: a
    stride replaced by dilation keeps the layer's first block at the previous dilation (UniMatch, torchvision)."""
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"output_stride must be 8, 16 or 32, not {output_stride}")
    plan, stride_so_far, dilation = [], 4, 1
    for index in range(4):
        stride = 1 if index == 0 else 2
        if stride_so_far * stride > output_stride:  # replace the stride by dilation
            previous, dilation = dilation, dilation * stride
            plan.append((1, previous, dilation))
        else:
            stride_so_far *= stride
            plan.append((stride, dilation, dilation))
    return tuple(plan)


class ResNet(nn.Module):
    """The encoder: stem, max-pool, layer1..layer4; ``forward`` returns the four layers' outputs (1/4, 1/8,
    1/16, and 1/16 at output stride 16). ``width`` (64 in ResNet-50/101) scales every layer; the deep stem is
    width-width-2*width."""

    def __init__(self, depths: Sequence[int] = DEPTHS["r50"], width: int = 64, stem: str = "deep",
                 output_stride: int = 16):
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"stem must be 'deep' or 'plain', not {stem!r}")
        if len(depths) != 4 or min(depths) < 1:
            raise ConfigError(f"depths must be four block counts >= 1, not {tuple(depths)}")
        self.stem = stem
        if stem == "deep":
            c_stem = 2 * width
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, width, 3, 2, 1, bias=False), BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, 1, 1, bias=False), BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, c_stem, 3, 1, 1, bias=False))
        else:
            c_stem = width
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = BatchNorm2d(c_stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = c_stem
        for index, (blocks, (stride, first, rest)) in enumerate(zip(depths, layer_dilations(output_stride))):
            planes = width * 2 ** index
            layer = [Bottleneck(c_in, planes, stride, first, BatchNorm2d)]
            layer += [Bottleneck(planes * EXPANSION, planes, 1, rest, BatchNorm2d) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
            c_in = planes * EXPANSION
        self.channels = (width * EXPANSION, width * 2 * EXPANSION, width * 4 * EXPANSION, width * 8 * EXPANSION)
        for module in self.modules():  # UniMatch's (torchvision's) initialisation of the encoder
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, recompute: bool = False) -> list[torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        outputs = []
        for index in range(1, 5):
            for block in getattr(self, f"layer{index}"):
                x = checkpointed(block, x) if recompute else block(x)
            outputs.append(x)
        return outputs


class ASPPPooling(nn.Module):
    """Image pooling: global average, 1x1 conv+BN+ReLU (``gap.1``, ``gap.2``), spread over the map (UniMatch
    upsamples the 1x1 map bilinearly with align_corners=True: the same value everywhere, as here)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_in, c_out, 1, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gap(x).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: five branches of ``c_out`` channels, concatenated, 1x1 projection."""

    def __init__(self, c_in: int, c_out: int, rates: Sequence[int] = ASPP_RATES):
        super().__init__()
        if len(rates) != 3:
            raise ConfigError(f"aspp_rates must be three atrous rates, not {tuple(rates)}")
        self.b0 = conv_bn_relu(c_in, c_out, 1)
        self.b1, self.b2, self.b3 = (conv_bn_relu(c_in, c_out, 3, rate) for rate in rates)
        self.b4 = ASPPPooling(c_in, c_out)
        self.project = conv_bn_relu(5 * c_out, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([self.b0(x), self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ (ResNet encoder, ASPP, 48-channel low-level path, two 3x3 fuse convolutions). Input (N, 3, H, W)
    RGB, uint8 or float in [0, 1]; output logits (N, num_classes, H, W) float32.

    The defaults are UniMatch's Cityscapes configuration with a ResNet-50; ``depths``, ``width``,
    ``low_level_channels`` and ``decoder_channels`` give smaller networks of the same layout and key names.
    ``head_init``: the head's convolutions keep PyTorch's default initialisation ("pytorch", as UniMatch's
    DeepLabV3Plus) or are drawn kaiming-normal (fan_in, ReLU gain: "kaiming", as CPS's ``init_weight``); the
    default one shrinks the signal about 3x per convolution, which training's BatchNorm undoes but a random
    network in evaluation mode does not (its logits are then nearly the same at every pixel).
    """

    recompute: bool = False  # rerun the encoder's blocks in the backward pass (set by the trainer: memory)

    def __init__(self, num_classes: int = 19, depths: Sequence[int] = DEPTHS["r50"], width: int = 64,
                 stem: str = "deep", output_stride: int = 16, aspp_rates: Sequence[int] = ASPP_RATES,
                 low_level_channels: int = 48, decoder_channels: int = 256, head_init: str = "pytorch"):
        super().__init__()
        if head_init not in HEAD_INITS:
            raise ConfigError(f"head_init must be 'pytorch' or 'kaiming', not {head_init!r}")
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone = ResNet(depths, width, stem, output_stride)
        c_low, c_high = self.backbone.channels[0], self.backbone.channels[3]
        c_aspp = c_high // 8  # 256 for ResNet-50/101, as UniMatch
        self.head = ASPP(c_high, c_aspp, aspp_rates)
        self.reduce = conv_bn_relu(c_low, low_level_channels, 1)
        self.fuse = nn.Sequential(*conv_bn_relu(c_aspp + low_level_channels, decoder_channels, 3),
                                  *conv_bn_relu(decoder_channels, decoder_channels, 3))  # fuse.0/1, fuse.3/4
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)
        if head_init == "kaiming":
            for head in (self.head, self.reduce, self.fuse, self.classifier):
                for module in head.modules():
                    if isinstance(module, nn.Conv2d):
                        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 or float in [0, 1] -> ImageNet-normalised float32 (UniMatch's ToTensor + Normalize)."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.mean) / self.std

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer1's output at 1/4, layer4's output at 1/output_stride) of input images: the decoder's inputs."""
        recompute = self.recompute and self.training and torch.is_grad_enabled()
        c1, _, _, c4 = self.backbone(self.normalise(images), recompute)
        return c1, c4

    def decode(self, c1: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        """Logits at layer1's resolution (1/4) from the two feature maps (UniMatch's ``_decode``)."""
        high = resize(self.head(c4), c1.shape[-2:])
        return self.classifier(self.fuse(torch.cat([self.reduce(c1), high], 1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return resize(self.decode(*self.features(images)), images.shape[-2:]).float()


# the ImageNet files each stem takes (UniMatch's README "Pretrained Backbone": Google Drive files
# 1mqUrqFvTQ0k5QEotk4oiOFyP6B9dVZXS (ResNet-50) and 1Rx0legsMolCWENpfvE2jUScT3ogalMO8 (ResNet-101); torchvision's
# from download.pytorch.org/models/, its V2 files resnet50-11ad3fa6.pth / resnet101-cd907fc2.pth have the same keys)
BACKBONE_FILES = {"deep": "UniMatch's ImageNet resnet50.pth / resnet101.pth (keys conv1.0 ... conv1.6)",
                  "plain": "torchvision's resnet50-0676ba61.pth / resnet101-63fe2227.pth (keys conv1.weight)"}


def load_backbone(model: DeepLabV3Plus, path: str | Path) -> DeepLabV3Plus:
    """Load ImageNet ResNet weights into ``model.backbone`` only (the head keeps its initialisation): the start
    of every semi-supervised recipe. The file's classifier (``fc.*``) is dropped; every other key must match the
    encoder the model was built with (depth, width, stem), else one-line DataError naming the file."""
    from .checkpoints import load_weights

    try:
        load_weights(model.backbone, path, "resnet_imagenet")
    except DataError as exc:
        raise DataError(f"{exc} (backbone files for stem={model.backbone.stem!r}: "
                        f"{BACKBONE_FILES[model.backbone.stem]})") from None
    return model


def _build(depths: Sequence[int], num_classes: int, backbone_weights: str | Path | None,
           options: dict) -> DeepLabV3Plus:
    model = DeepLabV3Plus(num_classes, **{"depths": depths, **options})
    return load_backbone(model, backbone_weights) if backbone_weights is not None else model


def deeplabv3plus_r50(num_classes: int = 19, backbone_weights: str | Path | None = None,
                      **options) -> DeepLabV3Plus:
    """DeepLabV3+ with a ResNet-50 (3-4-6-3) as UniMatch trains it on Cityscapes: deep stem, output stride 16.
    ``backbone_weights``: an ImageNet ResNet-50 file for the encoder (``resnet50.pth`` for the deep stem,
    torchvision's for ``stem="plain"``); ``options`` override the constructor's defaults."""
    return _build(DEPTHS["r50"], num_classes, backbone_weights, options)


def deeplabv3plus_r101(num_classes: int = 19, backbone_weights: str | Path | None = None,
                       **options) -> DeepLabV3Plus:
    """DeepLabV3+ with a ResNet-101 (3-4-23-3), UniMatch's Cityscapes network (its configs/cityscapes.yaml);
    ``backbone_weights`` as for ``deeplabv3plus_r50`` (``resnet101.pth`` or torchvision's ResNet-101)."""
    return _build(DEPTHS["r101"], num_classes, backbone_weights, options)
