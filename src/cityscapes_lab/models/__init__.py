"""Networks: one registry (``build_model``, ``list_models``) and one module per architecture."""

from .registry import MODELS, ModelSpec, build_model, list_models

__all__ = ["MODELS", "ModelSpec", "build_model", "list_models"]
