"""Loading published checkpoints safely and strictly.

Checkpoints from the internet are untrusted: they are read with ``torch.load(weights_only=True)`` (a file that
would need code execution is refused) and must match the model key for key. Each zoo model's published layout is
one row of ``LAYOUTS``; ``convert_state_dict`` is the one function that applies it: unwrap mmcv's
``{"state_dict", "meta"}`` dict, strip a key prefix, drop training-only entries, cast fp16 to fp32, and slice
class heads published with more classes (InternImage's 150-class ADE20K leftovers) to the model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..engine.checkpoint import FORMAT as CHECKPOINT_FORMAT
from ..engine.checkpoint import load_checkpoint
from ..errors import DataError


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
    if content.get("format") == CHECKPOINT_FORMAT:
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
