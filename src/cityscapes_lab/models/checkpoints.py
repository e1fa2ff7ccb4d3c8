"""Checkpoints: writing ours and loading any safely and strictly.

Our own files are plain dicts of tensors, numbers and strings, written atomically; every file is read with
``torch.load(weights_only=True)`` (or, for a safetensors file, the ``safetensors`` package: raw tensors by
design), so nothing loads by executing code.

Checkpoints from the internet are untrusted: they are read with ``torch.load(weights_only=True)`` (a file that
would need code execution is refused) or as safetensors, and must match the model key for key. Each zoo
model's published layout is one row of ``LAYOUTS``; ``convert_state_dict`` is the one function that applies
it: unwrap mmcv's ``{"state_dict", "meta"}`` dict, strip a key prefix, drop training-only entries, cast fp16 to
fp32, and slice class heads published with more classes (InternImage's 150-class ADE20K leftovers) to the
model's.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import atomic
from ..errors import DataError

FORMAT = "cityscapes-lab/checkpoint-v1"


def save_checkpoint(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` (plain types and tensors only) to ``path`` via a temporary file and a rename."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **content}, buffer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(Path(path), buffer.getvalue())


# NumPy data that released checkpoints keep in their metadata (mmseg stores its best mIoU as a NumPy float):
# rebuilt without running code. A pickle names a global by the module it had when it was written: NumPy 1 wrote
# ``numpy.core.multiarray``, NumPy 2 writes ``numpy._core.multiarray``, so both spellings are allowed by name.
NUMPY_DATA_GLOBALS = ("multiarray.scalar", "multiarray._reconstruct")


def _numpy_data_globals() -> list:
    """(object, name as written in the file) pairs for ``torch.serialization.safe_globals``."""
    import numpy
    from numpy._core import multiarray

    allowed: list = [numpy.dtype, numpy.ndarray]
    allowed += [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType")]
    for name in NUMPY_DATA_GLOBALS:
        target = getattr(multiarray, name.partition(".")[2])
        allowed += [(target, f"numpy.core.{name}"), (target, f"numpy._core.{name}")]
    return allowed


def _forbidden_globals(path: Path, exc: BaseException) -> list[str]:
    """The globals outside the allow-list that a refused file names (for the error message)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint: take the name from torch's message
        names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    allowed = {entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
               for entry in _numpy_data_globals()}  # the names the load allowed, as the file spells them
    return [n for n in names if n not in allowed]


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``; NumPy data in metadata, as NumPy 1 or 2 wrote it, is
    allowed); DataError if it is unreadable or would need code to load."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a checkpoint file; pass the .pt/.pth file")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: is empty (0 bytes), not a checkpoint; download or write it again")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        return _load_safetensors(path, map_location)
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no such checkpoint; check the path") from None
    except pickle.UnpicklingError as exc:
        forbidden = _forbidden_globals(path, exc)
        if not forbidden and "global" not in str(exc).lower():  # damaged bytes, not a forbidden object
            raise DataError(f"{path}: not a readable PyTorch checkpoint ({_first_sentence(exc)}); download or write "
                            "it again") from None
        named = ", ".join(forbidden[:4]) or "an object outside plain tensors and data"
        raise DataError(f"{path}: refused: loading it would run code it names ({named}); use the checkpoint as "
                        "published, or convert it to plain tensors in a process you trust") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        raise DataError(f"{path}: not a readable PyTorch checkpoint ({_first_sentence(exc)}); download or write it "
                        "again") from None


def file_identity(path: str | Path) -> dict[str, Any]:
    """Which file a result came from: its path, size in bytes and sha256 (read in 1 MiB blocks)."""
    import hashlib

    digest, path = hashlib.sha256(), Path(path)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return {"weights": str(path), "weights_bytes": path.stat().st_size, "weights_sha256": digest.hexdigest()}


def _is_safetensors(path: Path) -> bool:
    """Whether the file starts as a safetensors file does (an 8-byte little-endian header length, then the
    JSON header's "{"), whatever its name; PyTorch's files start with a zip or pickle signature instead."""
    try:
        with open(path, "rb") as file:
            head = file.read(9)
    except OSError:
        return False
    header_bytes = int.from_bytes(head[:8], "little")
    return len(head) == 9 and head[8:9] == b"{" and 0 < header_bytes < path.stat().st_size


def _load_safetensors(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors: plain data by design (a JSON header, raw bytes), nothing to unpickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint; check the path")
    try:
        return load_file(path, device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DataError(f"{path}: not a readable safetensors file ({_first_sentence(exc)}); download it "
                        "again") from None


def _first_sentence(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.split(". ")[0][:160]



@dataclass(frozen=True)
class CheckpointLayout:
    """How a published checkpoint's keys relate to our module's."""

    strip_prefix: str = ""  # removed from the front of every key that has it
    drop_prefixes: tuple[str, ...] = ()  # entries that are not weights of the network (e.g. loss buffers)
    class_heads: tuple[str, ...] = ()  # keys whose first dimension is the number of classes (may be sliced)


LAYOUTS: dict[str, CheckpointLayout] = {
    # HRNet-OCR: saved from a FullModel(model, loss) wrapper: "model." before every key, "loss." class weights
    "hrnet_ocr": CheckpointLayout("model.", ("loss.",), ("cls_head.weight", "cls_head.bias", "aux_head.3.weight",
                                                          "aux_head.3.bias")),
    # mmsegmentation: {"meta": ..., "state_dict": {...}}, keys already "backbone." / "decode_head." / ...
    "mmseg": CheckpointLayout("", (), ("decode_head.conv_seg.weight", "decode_head.conv_seg.bias",
                                       "auxiliary_head.conv_seg.weight", "auxiliary_head.conv_seg.bias")),
    # Hugging Face SegformerForSemanticSegmentation (model.safetensors, pytorch_model.bin): "segformer."
    # before the encoder's keys, "decode_head.*" as ours
    "hf_segformer": CheckpointLayout("segformer."),
    # UniMatch (DeepLabV3+): {"model", "optimizer", "epoch", "previous_best"} saved under DDP, "module." before
    # every key of the network; the rest of the keys are ours (backbone.*, head.*, reduce.*, fuse.*, classifier.*)
    "unimatch": CheckpointLayout("module."),
    # ImageNet ResNets into a model's backbone only (models.deeplabv3plus.load_backbone): UniMatch's deep-stem
    # resnet50.pth/resnet101.pth and torchvision's files; their 1000-class classifier "fc." is not ours
    "resnet_imagenet": CheckpointLayout("", ("fc.",)),
    # our own checkpoints (best.pt / top<k>.pt)
    "native": CheckpointLayout(),
}


def unwrap(content: Mapping) -> Mapping[str, torch.Tensor]:
    """The tensor dict of a checkpoint: ours ("state_dict" beside "model_name"), mmcv's ("state_dict" beside
    "meta"), or a bare state dict."""
    if "state_dict" in content and isinstance(content["state_dict"], Mapping):
        return content["state_dict"]
    if "model" in content and isinstance(content["model"], Mapping):
        return content["model"]
    return content


def convert_state_dict(state: Mapping[str, torch.Tensor], layout: CheckpointLayout,
                       expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply a published layout to a state dict so that it matches ``expected`` (the model's own)."""
    converted = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or any(key.startswith(p) for p in layout.drop_prefixes):
            continue
        if layout.strip_prefix and key.startswith(layout.strip_prefix):
            key = key[len(layout.strip_prefix):]
        if value.is_floating_point() and value.dtype != torch.float32:
            value = value.float()  # fp16 releases
        target = expected.get(key)
        if (key in layout.class_heads and target is not None and value.dim() == target.dim()
                and value.shape[0] > target.shape[0] and value.shape[1:] == target.shape[1:]):
            value = value[: target.shape[0]].clone()  # e.g. 150 ADE20K classes -> the first 19
        converted[key] = value
    return converted


def load_weights(model: nn.Module, path: str | Path, layout: str = "native", content: object = None) -> nn.Module:
    """Load a checkpoint into ``model`` strictly; DataError naming the file, with missing and unexpected keys
    (or shape mismatches) listed, if it does not fit. ``content``: the file's content if already loaded."""
    content = load_checkpoint(path) if content is None else content
    if not isinstance(content, Mapping):
        raise DataError(f"{path}: holds no state dict; pass a checkpoint of this model")
    if content.get("format") == FORMAT:
        layout = "native"  # one of ours (for example a fine-tuned zoo model)
    expected = model.state_dict()
    state = convert_state_dict(unwrap(content), LAYOUTS[layout], expected)
    for key in set(expected) - set(state):
        if key.endswith("num_batches_tracked"):  # a BatchNorm counter, not a weight: older files may lack it
            state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        def listed(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        problems = [f"{len(keys)} {what} ({listed(keys)})" for what, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("keys of another shape", mismatched))
                    if keys]
        raise DataError(f"{path}: does not fit this model: {'; '.join(problems)}; pass the checkpoint published "
                        "for this model")
    model.load_state_dict(state, strict=True)
    return model
