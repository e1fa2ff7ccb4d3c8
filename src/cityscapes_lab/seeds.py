"""Every random choice of the toolkit takes a seed derived here, so that the same study seed gives the same
numbers on every machine."""

from __future__ import annotations

import hashlib


def derive_seed(base: int, *parts: object) -> int:
    """A 31-bit seed from the study seed and any identifying parts (stable across machines and versions)."""
    digest = hashlib.sha256(repr((base,) + parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
