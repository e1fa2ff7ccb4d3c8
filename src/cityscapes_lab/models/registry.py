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
    protocol: str  # the evaluation protocol of ``zoo eval`` that reproduces it: whole | slide | ms-flip
    note: str = ""


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
    """The network a training's settings (``config.TrainConfig``) describe: ``train.model`` (or ``name``), with
    the width multiplier ``train.alpha`` for networks that have one (``options`` override it). Returns the model
    and the options it was built with; ConfigError for a non-default ``train.alpha`` on a network without one."""
    name = name or train.model
    options = dict(options or {})
    if "alpha" in inspect.signature(model_spec(name).resolve()).parameters:
        options.setdefault("alpha", train.alpha)
    elif train.alpha != type(train)().alpha:
        raise ConfigError(f"train.alpha {train.alpha}: {name} has no width multiplier; leave train.alpha at its "
                          "default (other options: --option KEY=VALUE)")
    return build_model(name, num_classes, weights=weights, **options), options
