"""cityscapes-lab: semantic segmentation on Cityscapes with few labels.

The public API is re-exported here and imported on first use, so that ``import cityscapes_lab`` stays light
(no torch). Its one effect: unless already set, ``THP_MEM_ALLOC_ENABLE=1``, so that PyTorch's CPU allocator backs
large tensors with huge pages. A CPU training step then spends far less time in page faults (about 1.3x faster
on our 2-core machine, benchmarks/RESULTS.md); PyTorch reads it once, at its first allocation, so import
cityscapes_lab before creating tensors, or set the variable yourself.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# public name -> module that defines it
_EXPORTS = {
    "LabError": "errors",
    "DataError": "errors",
    "ConfigError": "errors",
    "synthesize": "data.synth",
    "SynthOptions": "data.synth",
    "prepare": "data.prepare",
    "PrepareOptions": "data.prepare",
    "load_prepared": "data.prepared",
    "PreparedData": "data.prepared",
    "SplitArrays": "data.prepared",
    "build_model": "models",
    "list_models": "models",
    "Config": "config",
    "load_config": "config",
    "run_study": "semisup.study",
    "write_report": "report",
    "evaluate_folders": "metrics.folders",
    # the study's rules, as pure functions on arrays
    "inconsistency_mask": "semisup.rules",
    "ensemble_label": "semisup.rules",
    "input_ensemble_inputs": "semisup.rules",
    "generation_params": "semisup.rules",
    "copies_for_score": "semisup.rules",
    "evalnet_targets": "semisup.rules",
    "evalnet_im_targets": "semisup.rules",
    "evalnet_score": "semisup.rules",
    "augment": "data.augment",
    "augment_photometric": "data.augment",
    "AugmentParams": "data.augment",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover  (names for type checkers; imported on first use below)
    from .data.prepare import PrepareOptions, prepare
    from .data.prepared import PreparedData, SplitArrays, load_prepared
    from .data.synth import SynthOptions, synthesize
    from .config import Config, load_config
    from .data.augment import AugmentParams, augment, augment_photometric
    from .semisup.rules import (copies_for_score, ensemble_label, evalnet_im_targets, evalnet_score,
                                evalnet_targets, generation_params, inconsistency_mask, input_ensemble_inputs)
    from .errors import ConfigError, DataError, LabError
    from .metrics.folders import evaluate_folders
    from .models import build_model, list_models
    from .report import write_report
    from .semisup.study import run_study


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cityscapes_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
