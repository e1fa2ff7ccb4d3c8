"""Splitting image lists: the study's exact split and seeded labeled subsets for the standard protocol."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError


def study_split(names: Sequence[str], test_size: float, seed: int, what: str = "images"
                ) -> tuple[list[str], list[str]]:
    """The two parts ``(A, B)`` of ``sklearn.model_selection.train_test_split(names, test_size=test_size,
    random_state=seed)``, computed without scikit-learn.

    As scikit-learn does: ``n_B = ceil(test_size * n)``, ``n_A = n - n_B``; a legacy ``RandomState(seed)``
    permutation of ``range(n)``; B takes its first ``n_B`` entries and A the rest, each in permutation order.
    The study sorted the names first (its Windows listing order), so pass them sorted for its exact membership.
    """
    n = len(names)
    n_b = math.ceil(test_size * n)
    n_a = n - n_b
    if not 0 < test_size < 1 or n_a <= 0 or n_b <= 0:
        raise ConfigError(f"splitting {n} {what} with test_size {test_size:g} leaves an empty part; use more images "
                          "or another fraction")
    permutation = np.random.RandomState(seed).permutation(n)
    return [names[i] for i in permutation[n_b:]], [names[i] for i in permutation[:n_b]]


def parse_fraction(text: str) -> float:
    """``"1/8"`` or ``"0.125"`` -> 0.125; ConfigError unless 0 < value < 1."""
    try:
        numerator, _, denominator = text.partition("/")
        value = float(numerator) / float(denominator) if denominator else float(numerator)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"labeled fraction {text!r} is not a number like 1/8 or 0.125") from None
    if not 0 < value < 1:
        raise ConfigError(f"labeled fraction {text!r} must lie strictly between 0 and 1")
    return value


def fraction_name(text: str) -> str:
    """A split-name suffix for a fraction: ``"1/16"`` -> ``"1_16"``, ``"0.25"`` -> ``"0_25"``."""
    return text.replace("/", "_").replace(".", "_")


def labeled_subset(names: Sequence[str], fraction: float, seed: int) -> list[str]:
    """``ceil(fraction * n)`` names drawn by a seeded permutation (2975 images: 1/16, 1/8, 1/4, 1/2 give 186,
    372, 744, 1488), returned sorted."""
    count = math.ceil(fraction * len(names) - 1e-9)
    permutation = np.random.RandomState(seed).permutation(len(names))
    return sorted(names[i] for i in permutation[:count])
