"""Predicting with any registered model: the model's test-time protocols, images to labelIds, and
``cityscapes-lab predict`` (images, folders and videos in; submission PNGs, colour PNGs and overlays out)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import atomic
from ..data import png
from ..errors import ConfigError, DataError
from ..interrupts import raise_if_interrupted
from ..labels import LABELID_PALETTE, PAPER_NUM_CLASSES, PAPER_TO_LABELID, TRAINID_TO_LABELID
from ..models.registry import ModelSpec, model_spec
from ..outputs import check_output_folder, holds_only
from .inference import MS_SCALES, InferenceProtocol, infer, unimatch_stride
from .runtime import Runtime, resolve_device, resolve_precision

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


UNIMATCH_WINDOW = 801  # UniMatch V1's Cityscapes crop_size (configs/cityscapes.yaml), for DeepLabV3+
U2PL_CROP = 769  # U2PL's val crop (experiments/cityscapes/*/config.yaml: dataset.val.crop, type center)


def _unimatch(edge: str) -> Callable[[ModelSpec, int | None], InferenceProtocol]:
    """UniMatch's sliding window (square, stride int(window * 2 / 3), softmax per window, summed) with an edge rule."""
    def protocol(spec: ModelSpec, window: int | None) -> InferenceProtocol:
        size = window or UNIMATCH_WINDOW
        return InferenceProtocol("slide", (size, size), (unimatch_stride(size),) * 2, combine="unimatch",
                                 edge=edge, overlap="sum")
    return protocol


# name -> the protocol for a model entry and an optional square window / crop (the rules: engine.inference)
PROTOCOLS: dict[str, Callable[[ModelSpec, int | None], InferenceProtocol]] = {
    "whole": lambda spec, window: InferenceProtocol(),
    "slide": lambda spec, window: InferenceProtocol("slide", *spec.slide),
    "ms-flip": lambda spec, window: InferenceProtocol("whole", *spec.slide, MS_SCALES, True, spec.ms_combine,
                                                      spec.ms_slide_above),
    "slide-unimatch-v1": _unimatch("truncate"),
    "slide-shifted": _unimatch("shift"),
    "center-crop": lambda spec, window: InferenceProtocol(score_crop=(window or U2PL_CROP,) * 2),
}


#: the protocols whose square window (or centre crop) ``window`` replaces
WINDOWED = ("slide-unimatch-v1", "slide-shifted", "center-crop")


def protocol_for(spec: ModelSpec, name: str, window: int | None = None) -> InferenceProtocol:
    """The model's version of a named protocol (``PROTOCOLS``), resizing at the model's ``align_corners``.
    ``window`` replaces the semi-supervised rules' default square window (801) or crop (769): e.g. 798 for
    UniMatch V2's own DINOv2 models."""
    if name not in PROTOCOLS:
        raise DataError(f"unknown protocol {name!r}; choose {', '.join(PROTOCOLS)}")
    return replace(PROTOCOLS[name](spec, window), align_corners=spec.align_corners)


def rule_protocol(model_name: str, name: str, window: int = 0) -> InferenceProtocol | None:
    """A study's evaluation rule (study.eval_rule, train.val_rule) for a registry model; None for whole images,
    which take the plain prediction path (``inference.predict``). ``window`` 0: the rule's own."""
    return None if name == "whole" else protocol_for(model_spec(model_name), name, window or None)


def label_ids_of(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """A model's class indices as Cityscapes labelIds: the study's 35 indices or the 19 trainIds."""
    return (PAPER_TO_LABELID if num_classes == PAPER_NUM_CLASSES else TRAINID_TO_LABELID)[classes]


@dataclass(frozen=True)
class Predictor:
    """A model ready to predict single images with a protocol."""

    model: nn.Module
    num_classes: int
    protocol: InferenceProtocol
    runtime: Runtime
    input_size: tuple[int, int] | None = None  # (W, H) the model must see (e.g. the study's U-Net: 416x208)
    name: str = ""
    weights: dict | None = None  # the weights file: path, size, sha256 (models.checkpoints.file_identity)

    def describe(self) -> dict:
        """What produced a result: model, weights file (path, bytes, sha256), protocol, device, precision."""
        return {"model": self.name, **(self.weights or {"weights": None}), "device": str(self.runtime.device),
                "precision": self.runtime.precision}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) uint8 Cityscapes labelIds, of ``protocol.scored(image)``: the whole image,
        or the protocol's centre crop (score it against ``protocol.scored(labels)``)."""
        image = self.protocol.scored(image)  # cropped here, before any resize to the model's input size
        height, width = image.shape[:2]
        view = image if self.input_size is None else cv2.resize(image, self.input_size, interpolation=cv2.INTER_LINEAR)
        # uint8 in: the protocol resizes it as the official code does, the model normalises it
        protocol = replace(self.protocol, score_crop=None)
        classes = infer(self.model, view[None], protocol, self.num_classes, self.runtime).argmax(dim=1)[0]
        classes = classes.to(torch.uint8).cpu().numpy()
        if classes.shape != (height, width):
            classes = cv2.resize(classes, (width, height), interpolation=cv2.INTER_NEAREST)
        return label_ids_of(classes, self.num_classes)


def load_predictor(name: str | None, weights: str | Path | None, protocol: str = "whole", device: str = "auto",
                   precision: str = "auto", num_classes: int = 19, random_weights: bool = False,
                   window: int | None = None) -> Predictor:
    """A registered model ready to predict. Our own checkpoints name their model, classes and input size (``name``
    may then be None; a different ``name`` is refused); a published checkpoint is loaded into ``name`` with
    ``num_classes`` (19). Without ``weights`` the model keeps its random initialisation, only if
    ``random_weights`` says so."""
    from ..models.checkpoints import FORMAT, file_identity, load_checkpoint, load_weights
    from ..models.registry import build_model, list_models, model_spec

    torch_device = resolve_device(device, "--device")
    if weights is None and not random_weights:
        raise ConfigError("--weights is missing, so the model would predict with random weights; pass a checkpoint "
                          "(or --random-weights to try the pipeline without one)")
    options, input_size, content = {}, None, None
    if weights is not None:
        content = load_checkpoint(weights)
        if isinstance(content, dict) and content.get("format") == FORMAT and "model_name" in content:
            saved = content["model_name"]
            if name is not None and name != saved:
                raise ConfigError(f"{weights}: is a checkpoint of {saved}, not {name}; pass --model {saved} (or leave "
                                  "--model out: our checkpoints name their model)")
            name, num_classes = saved, content["num_classes"]
            options = content.get("model_options", {})
            input_size = tuple(content["input_size"]) if content.get("input_size") else None
    if name is None:
        raise ConfigError(f"--model is missing{f' and {weights} does not name its model' if weights else ''}; pass "
                          f"one of: {', '.join(list_models())}")
    spec = model_spec(name)
    if name == "unet_paper" and input_size is None:
        input_size = (416, 208)  # the study's resolution (multiples of 16 are required)
    model = build_model(name, num_classes, **options)
    if weights is not None:
        load_weights(model, weights, spec.layout, content)
    # channels-last where convolutions gain from it (GPUs); on the CPU the zoo's networks run NCHW as published
    runtime = Runtime(torch_device, resolve_precision(precision, torch_device), torch_device.type == "cuda")
    model = model.to(torch_device).eval()
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if input_size is not None and protocol == "center-crop":
        raise ConfigError(f"{weights or name}: sees every image resized to {input_size[0]}x{input_size[1]} (the size "
                          "it was trained at), so a centre crop of the original cannot be scored with it; use another "
                          "--protocol (or a model trained at the original resolution)")
    if window is not None and protocol not in WINDOWED:
        raise ConfigError(f"--window applies to the protocols {', '.join(WINDOWED)}; {protocol} has no window "
                          "to set (leave --window out)")
    return Predictor(model, num_classes, protocol_for(spec, protocol, window), runtime, input_size, name,
                     file_identity(weights) if weights is not None else None)


def colourise(label_ids: np.ndarray) -> np.ndarray:
    """The official colour of every pixel's label, (H, W, 3) uint8 RGB."""
    return LABELID_PALETTE[label_ids]


def overlay(image: np.ndarray, label_ids: np.ndarray, weight: float = 0.5) -> np.ndarray:
    return cv2.addWeighted(image, 1 - weight, colourise(label_ids), weight, 0)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Silence what native libraries print straight to the process's stderr while OpenCV opens and decodes files
    (FFmpeg's "moov atom not found", libpng's warnings): our own one-line error follows instead."""
    sys.stderr.flush()
    saved, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(quiet, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


def _frames(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB image) of an image file, or of every frame of a video."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        with native_stderr_silenced():
            video = cv2.VideoCapture(str(path))
        try:
            if not video.isOpened():
                raise DataError(f"{path}: OpenCV cannot open this video (empty or damaged, or an unknown codec); "
                                "convert it to mp4 (H.264) or extract its frames as images")
            index = 0
            while True:
                with native_stderr_silenced():
                    ok, frame = video.read()
                if not ok:
                    break
                yield f"{path.stem}_{index:06d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            video.release()
        if index == 0:
            raise DataError(f"{path}: no frame of this video could be decoded (empty or damaged); convert it to mp4 "
                            "(H.264) or extract its frames as images")
        return
    with native_stderr_silenced():
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: not a readable image; pass PNG/JPEG images, folders of them, or videos")
    yield path.stem, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Image and video files named directly or found in folders (recursively), sorted within each folder."""
    found = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"{item}: no such file or folder; pass images, folders or videos")
    if not found:
        raise DataError(f"{', '.join(map(str, inputs))}: no images or videos found")
    return found


OUTPUT_FOLDERS = ("labelIds", "color", "overlay")


def check_prediction_output(out: Path, inputs: list[Path]) -> None:
    """Refuse an output folder that is, holds or lies in an input, or that holds anything but earlier predictions."""
    check_output_folder(out, what="predictions", ours=holds_only(*OUTPUT_FOLDERS), inputs=inputs)


def predict_files(predictor: Predictor, inputs: list[Path], out: Path, colour: bool = True,
                  overlays: bool = True) -> int:
    """Predict every image / video frame; write ``labelIds/<name>.png`` (official submission format: the
    names keep the input's, so Cityscapes ids stay in them), ``color/`` and ``overlay/``. Returns the count."""
    out = Path(out)
    check_prediction_output(out, inputs)
    files = collect_inputs(inputs)
    folders = {"labelIds": out / "labelIds"} | ({"color": out / "color"} if colour else {}) | (
        {"overlay": out / "overlay"} if overlays else {})
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in tqdm(files, desc="predict", unit="file", disable=None):
        for name, image in _frames(path):
            raise_if_interrupted()
            label_ids = predictor(image)
            atomic.write_bytes(folders["labelIds"] / f"{name}.png", png.encode(label_ids))
            if colour:
                atomic.write_bytes(folders["color"] / f"{name}.png", png.encode(colourise(label_ids)))
            if overlays:
                blended = overlay(predictor.protocol.scored(image), label_ids)  # of the predicted pixels
                atomic.write_bytes(folders["overlay"] / f"{name}.png", png.encode(blended))
            count += 1
    return count
