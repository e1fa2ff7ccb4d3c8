"""Cityscapes-format stand-in data: procedurally drawn street scenes in the official folder layout.

``scene`` builds a scene as annotated polygons (pure, seeded), ``render`` turns it into the label images and the
photo, and ``writer`` lays the files out like the official download (folders or zips), in parallel.
"""

from .writer import MARKER, SynthOptions, synthesize, train_ids_from

__all__ = ["MARKER", "SynthOptions", "synthesize", "train_ids_from"]
