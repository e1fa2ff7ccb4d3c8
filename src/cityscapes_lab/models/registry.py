"""The one registry of networks: name -> how to build it. ``build_model`` and ``list_models`` are the only ways in.

Adding a model means one module with its ``nn.Module`` and one entry here. Nothing registers itself on import.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError
from .unet import UNetPaper


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered network."""

    builder: Callable[..., nn.Module]
    description: str
    defaults: dict = field(default_factory=dict)  # options passed unless the caller overrides them


MODELS: dict[str, ModelSpec] = {
    "unet_paper": ModelSpec(UNetPaper, "the Inconsistency-Masks study's U-Net (680,755 parameters at alpha 1)",
                            {"alpha": 1.0}),
}


def list_models() -> list[str]:
    """Names of every registered network."""
    return sorted(MODELS)


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a registered network for ``num_classes`` classes; ConfigError for an unknown name or option."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    spec = MODELS[name]
    accepted = set(inspect.signature(spec.builder).parameters) - {"num_classes"}
    unknown = set(options) - accepted
    if unknown:
        raise ConfigError(f"model {name!r} has no option {', '.join(sorted(unknown))}; it takes: "
                          f"{', '.join(sorted(accepted))}")
    return spec.builder(num_classes=num_classes, **{**spec.defaults, **options})
