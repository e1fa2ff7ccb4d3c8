"""The one registry of networks: name -> how to build it, what its published weights are, how it is evaluated.
``build_model`` and ``list_models`` are the only ways in; nothing registers itself on import.

Adding a model means one module with its ``nn.Module`` and one entry in ``MODELS``. Zoo entries name their
builder as ``module:function`` so that importing the registry does not import every architecture.

The contract every registry model honours (tested for each one):
- input: RGB images (N, 3, H, W), uint8 (0..255) or float in [0, 1]; the model normalises them itself (its own
  mean and std, or the study's /255), so a caller never scales for a particular model;
- output: logits (N, num_classes, H, W) float32 at the input resolution (models with an auxiliary head return
  ``(main, aux)`` only when called with ``return_aux=True``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class PublishedWeights:
    """A released checkpoint and the number published for it."""

    file: str
    url: str
    miou: float  # percent
    number: str  # what the number is: split, test-time protocol
    training_data: str
    protocol: str  # the evaluation protocol of ``zoo eval`` that reproduces it (engine.prediction.PROTOCOLS)
    note: str = ""
    split_family: str = ""  # semi-supervised releases: the labeled-subset family (data.split_families), e.g. cps
    fraction: str = ""  # and the labeled fraction of train, e.g. "1/16"


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered network and how it is evaluated."""

    builder: str | Callable[..., nn.Module]  # a callable, or "module:function" imported on first use
    description: str
    defaults: dict = field(default_factory=dict)  # options passed unless the caller overrides them
    layout: str = "native"  # key layout of its published checkpoints (models.checkpoints.LAYOUTS)
    licence: str = ""
    weights: tuple[PublishedWeights, ...] = ()
    align_corners: bool = False  # how the model resizes: test-time resizing follows it
    slide: tuple[tuple[int, int], tuple[int, int]] = ((512, 1024), (341, 683))  # (crop, stride) of "slide"
    ms_combine: str = "softmax"  # how "ms-flip" combines scales and flips (engine.inference)
    ms_slide_above: float | None = None  # "ms-flip" slides at scales above this (HRNet-OCR's own protocol)
    test_options: dict = field(default_factory=dict)  # a small configuration of the same structure, for tests

    def resolve(self) -> Callable[..., nn.Module]:
        if callable(self.builder):
            return self.builder
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)


def _unet(num_classes: int = 35, alpha: float = 1.0) -> nn.Module:
    from .unet import UNetPaper

    return UNetPaper(num_classes=num_classes, alpha=alpha)


HRNET_URL = "https://github.com/hsfzxjy/models.storage/releases/download/HRNet-OCR/"
INTERNIMAGE_URL = "https://huggingface.co/OpenGVLab/InternImage/resolve/main/"
SEGFORMER_URL = "https://huggingface.co/nvidia/segformer-{}-finetuned-cityscapes-1024-1024/resolve/main/"
SEGFORMER_LICENCE = "NVIDIA Source Code License (NVlabs/SegFormer): non-commercial, research or evaluation only"


def _segformer(variant: str, parameters: float, miou: float, multi_scale: float) -> ModelSpec:
    """A SegFormer entry: the Hugging Face port of NVlabs' Cityscapes 1024x1024 release, with the paper's
    single-scale val number for it (Table 1(a) of Xie et al. 2021, whose sliding window is ``slide``)."""
    return ModelSpec(
        f"cityscapes_lab.models.segformer:segformer_{variant}",
        f"SegFormer-{variant.upper()}: Mix Transformer encoder + all-MLP decoder ({parameters:.2f} M parameters)",
        layout="hf_segformer", licence=SEGFORMER_LICENCE, align_corners=False, slide=((1024, 1024), (768, 768)),
        test_options={"size": "tiny-test"},
        weights=(PublishedWeights(
            "pytorch_model.bin", SEGFORMER_URL.format(variant) + "pytorch_model.bin", miou,
            f"val, single scale, 1024x1024 sliding window (stride 768) over the 1024x2048 images, no flip "
            f"(paper Table 1(a); multi-scale + flip: {multi_scale})", "train (fine), encoder pretrained on "
            "ImageNet-1k", "slide", "converted by Hugging Face from NVlabs' checkpoint; model.safetensors is only on "
            "the repository's unmerged safetensors pull-request branch; either file loads"),))


UNIMATCH_URL = "https://drive.google.com/file/d/{}/view"
UNIMATCH_LICENCE = "MIT (LiheYoung/UniMatch's LICENSE; its README gives no other terms for the checkpoints)"
# UniMatch's released Cityscapes checkpoints (README "Cityscapes" table: the UniMatch rows link one Google Drive
# file per split; the supervised baselines and U2PL rows have none): split -> (labelled images of its
# splits/cityscapes/<split>/labeled.txt, UniMatch mIoU, best value in its training log, Drive file id,
# supervised-baseline mIoU on the same split)
UNIMATCH_RELEASES = {
    "r50": {"1_16": (186, 75.0, 75.03, "1J-GjeZRhIhnbxtD8f_lDflXB24S1E995", 63.3),
            "1_8": (372, 76.8, 76.77, "1pA-enIDGWSVyhJg7SFIjFQ-nlxetj6-m", 70.2),
            "1_4": (744, 77.5, 77.49, "1EEh8XMljUf40wzMblnv9Ez9_dfXYqO7P", 73.1),
            "1_2": (1488, 78.6, 78.60, "18Bd43RsXhTw9RL3F9Vn9lz_Gs5KQWaTE", 76.6)},
    "r101": {"1_16": (186, 76.6, 76.59, "1qmCBLC9aj57kz1_OptvK6YTo4GwxTsiK", 66.3),
             "1_8": (372, 77.9, 77.92, "14LrPkWC8QIMO44da5pGflyOrW_Fdxo0U", 72.8),
             "1_4": (744, 79.2, 79.22, "1cL-p2_FIwEe9Y4AapSjlLmt4hdAZzX7a", 75.0),
             "1_2": (1488, 79.5, 79.45, "1ve2BAYoh8wzQxhKD-CE7bsjcR5KqQEa3", 78.0)},
}


def _deeplabv3plus(depth: str, parameters: float) -> ModelSpec:
    """A DeepLabV3+ entry with UniMatch's released Cityscapes checkpoints (CVPR 2023 camera-ready / README
    numbers: output stride 16, confidence threshold 0), evaluated as UniMatch V1 does (``supervised.evaluate``,
    mode sliding_window: windows of crop_size 801 every int(801 * 2 / 3) = 534 pixels, truncated at the border,
    softmax summed: ``--protocol slide-unimatch-v1``)."""
    layers = {"r50": 50, "r101": 101}[depth]
    weights = tuple(
        PublishedWeights(
            f"unimatch_cityscapes_{depth}_{split}.pth", UNIMATCH_URL.format(drive), miou,
            f"val (500 images), single scale, no flip, UniMatch V1's sliding windows: 801x801 every 534 px, "
            f"truncated at the border (x 0/534/1068/1602, y 0/534), softmax per window summed; the best of 240 "
            f"per-epoch val evaluations (best.pth: chosen on val; training log {logged:.2f}); supervised baseline "
            f"on the same split: {supervised} (not released)",
            f"UniMatch on train (fine): the {labelled} labelled images of the CPS partition {fraction} (split family "
            f"cps; UniMatch's splits/cityscapes/{split}) + the other {2975 - labelled} train images unlabelled; "
            f"ResNet-{layers} ImageNet-pretrained (deep stem, UniMatch's resnet{layers}.pth)", "slide-unimatch-v1",
            "Google Drive link of UniMatch's README; the file name is ours (UniMatch's code writes best.pth); a "
            "dict {model, optimizer, epoch, previous_best} saved under DDP ('module.' before every key), loaded as "
            "published", split_family="cps", fraction=fraction)
        for split, (labelled, miou, logged, drive, supervised) in UNIMATCH_RELEASES[depth].items()
        for fraction in [split.replace("_", "/")])
    return ModelSpec(
        f"cityscapes_lab.models.deeplabv3plus:deeplabv3plus_{depth}",
        f"DeepLabV3+ with a ResNet-{layers} (deep stem, output stride 16, ASPP 6/12/18), UniMatch's network "
        f"({parameters:.2f} M parameters at 19 classes)",
        layout="unimatch", licence=UNIMATCH_LICENCE, align_corners=True, slide=((801, 801), (534, 534)),
        # the test size keeps every module (layer4 with a dilated second block); kaiming head init, because with
        # PyTorch's default the random evaluation-mode logits are flat and would not show a wrong input scale
        test_options={"depths": (1, 1, 1, 2), "width": 8, "low_level_channels": 8, "decoder_channels": 16,
                      "head_init": "kaiming"},
        weights=weights)


MODELS: dict[str, ModelSpec] = {
    "unet_paper": ModelSpec(
        _unet, "the Inconsistency-Masks study's U-Net (680,755 parameters at alpha 1)", {"alpha": 1.0},
        licence="MIT (this project)", slide=((208, 416), (208, 416)), test_options={"alpha": 0.5}),
    "hrnet_w48_ocr": ModelSpec(
        "cityscapes_lab.models.hrnet_ocr:hrnet_w48_ocr", "HRNetV2-W48 with the OCR head (70.37 M parameters)",
        layout="hrnet_ocr", licence="MIT (HRNet/HRNet-Semantic-Segmentation)", align_corners=True,
        slide=((1024, 2048), (1024, 2048)), ms_combine="hrnet", ms_slide_above=1.0,
        test_options={"width": 4, "stem_channels": 8, "ocr_mid_channels": 16, "ocr_key_channels": 8},
        weights=(
            PublishedWeights("hrnet_ocr_cs_8162_torch11.pth", HRNET_URL + "hrnet_ocr_cs_8162_torch11.pth", 81.6,
                             "val, single scale, whole 1024x2048 image, no flip", "train (fine)", "whole"),
            PublishedWeights("hrnet_ocr_cs_trainval_8227_torch11.pth",
                             HRNET_URL + "hrnet_ocr_cs_trainval_8227_torch11.pth", 82.27,
                             "test server, multi-scale 0.5-1.75 + flip", "train + val (fine)", "ms-flip",
                             "val is in its training data: scores on val are not held out"),
        )),
    "upernet_internimage_l": ModelSpec(
        "cityscapes_lab.models.upernet:upernet_internimage_l", "UperNet with an InternImage-L backbone (DCNv3)",
        layout="mmseg", licence="MIT (OpenGVLab/InternImage)", test_options={"size": "tiny-test"},
        weights=(PublishedWeights("upernet_internimage_l_512x1024_160k_cityscapes.pth",
                                  INTERNIMAGE_URL + "upernet_internimage_l_512x1024_160k_cityscapes.pth", 84.41,
                                  "val, multi-scale 0.5-1.75 + flip, whole images (single scale: 83.68)",
                                  "train (fine), ImageNet-22k pretraining", "ms-flip",
                                  "released in fp16 with 150-class heads: cast to fp32 and sliced to 19 classes"),)),
    "upernet_internimage_xl": ModelSpec(
        "cityscapes_lab.models.upernet:upernet_internimage_xl", "UperNet with an InternImage-XL backbone (DCNv3)",
        layout="mmseg", licence="MIT (OpenGVLab/InternImage)", test_options={"size": "tiny-test"},
        weights=(PublishedWeights("upernet_internimage_xl_512x1024_160k_mapillary2cityscapes.pth",
                                  INTERNIMAGE_URL + "upernet_internimage_xl_512x1024_160k_mapillary2cityscapes.pth",
                                  86.42, "val, multi-scale 0.5-1.75 + flip, whole images (single scale: 86.20)",
                                  "Mapillary, then train (fine) + train_extra (coarse)", "ms-flip",
                                  "upstream issue #306 reports bad outputs from this file: check it on val first"),)),
    "segformer_b0": _segformer("b0", 3.72, 76.2, 78.1),
    "segformer_b1": _segformer("b1", 13.68, 78.5, 80.0),
    "segformer_b2": _segformer("b2", 27.36, 81.0, 82.2),
    "segformer_b3": _segformer("b3", 47.24, 81.7, 83.3),
    "segformer_b4": _segformer("b4", 64.01, 82.3, 83.9),
    "segformer_b5": _segformer("b5", 84.61, 82.4, 84.0),
    "deeplabv3plus_r50": _deeplabv3plus("r50", 40.48),
    "deeplabv3plus_r101": _deeplabv3plus("r101", 59.47),
}


@dataclass(frozen=True)
class UnavailableModel:
    """A row of the published table that cannot be run: no code or weights were released."""

    name: str
    rows: tuple[tuple[str, float, str], ...]  # (variant, mIoU, what the number is)
    reason: str


UNAVAILABLE: tuple[UnavailableModel, ...] = (
    UnavailableModel("SERNet-Former", (
        ("ResNet-50 baseline", 73.31, "paper ablation; split not stated"),
        ("Efficient-ResNet R101", 77.04, "paper ablation; split not stated"),
        ("final model", 84.83, "test server, as claimed"),
    ), "no model code and no weights are published (the repository is 'all rights reserved'; the author says "
       "the network is MATLAB and will not be shared), so nothing can be loaded, evaluated or checked"),
)


def list_models() -> list[str]:
    """Names of every registered network."""
    return sorted(MODELS)


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return MODELS[name]


def build_model(name: str, num_classes: int, weights: str | Path | None = None, **options) -> nn.Module:
    """Build a registered network for ``num_classes`` classes, optionally loading ``weights`` (a published
    checkpoint or one of ours, read safely and strictly); ConfigError for an unknown name or option."""
    spec = model_spec(name)
    builder = spec.resolve()
    accepted = set(inspect.signature(builder).parameters) - {"num_classes", "options", "overrides"}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values())
    unknown = set(options) - accepted
    if unknown and not takes_any:
        raise ConfigError(f"model {name!r} has no option {', '.join(sorted(unknown))}; it takes: "
                          f"{', '.join(sorted(accepted))}")
    try:
        model = builder(num_classes=num_classes, **{**spec.defaults, **options})
    except TypeError as exc:  # an option the architecture does not take
        raise ConfigError(f"model {name!r}: {exc}") from None
    if weights is not None:
        from .checkpoints import load_weights

        load_weights(model, weights, spec.layout)
    return model


def training_model(train, num_classes: int, name: str | None = None, options: dict | None = None,
                   weights: str | Path | None = None) -> tuple[nn.Module, dict]:
    """The network a training's settings (``config.TrainConfig``) describe: ``train.model`` (or ``name``) with
    ``train.model_options``, and the width multiplier ``train.alpha`` for networks that have one (``options``
    override both). Returns the model
    and the options it was built with; ConfigError for a non-default ``train.alpha`` on a network without one."""
    name = name or train.model
    options = {**getattr(train, "model_options", {}), **(options or {})}
    if "alpha" in inspect.signature(model_spec(name).resolve()).parameters:
        options.setdefault("alpha", train.alpha)
    elif train.alpha != type(train)().alpha:
        raise ConfigError(f"train.alpha {train.alpha}: {name} has no width multiplier; leave train.alpha at its "
                          "default (other options: --option KEY=VALUE)")
    return build_model(name, num_classes, weights=weights, **options), options


def architecture_options(options: dict) -> dict:
    """The options that rebuild a trained network, as its checkpoint keeps them: not where its starting weights
    came from (``backbone_weights``: the trained weights are in the checkpoint, and the ImageNet file need not
    exist where the checkpoint is used)."""
    return {key: value for key, value in options.items() if key != "backbone_weights"}
