"""Networks: one registry (``build_model``, ``list_models``) and one module per architecture."""

from .registry import MODELS, UNAVAILABLE, ModelSpec, PublishedWeights, build_model, list_models, model_spec

__all__ = ["MODELS", "UNAVAILABLE", "ModelSpec", "PublishedWeights", "build_model", "list_models", "model_spec"]
