"""The study's offline augmentations (paper-protocol notes 4) as pure functions on arrays.

``augment`` (ALDT, Noisy Student, IM+, ...): horizontal flip of image and mask, then with p=0.5 a brightness
change ``saturate(|alpha*x + beta|)`` (OpenCV convertScaleAbs), a Gaussian blur of radius r drawn from
0..max_blur (kernel 2r+1, sigma from the kernel size), and integer noise. ``augment_photometric`` (consistency
loss, input ensemble): blur and noise first, then the brightness change; no geometry. Every draw comes from the
given generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentParams:
    contrast: tuple[float, float] = (0.6, 1.4)  # alpha range
    brightness: tuple[float, float] = (-15.0, 15.0)  # beta range
    max_blur: int = 1
    max_noise: int = 15


def _brightness(image: np.ndarray, params: AugmentParams, rng: np.random.Generator) -> np.ndarray:
    alpha, beta = rng.uniform(*params.contrast), rng.uniform(*params.brightness)
    if rng.random() < 0.5:
        return cv2.convertScaleAbs(image, alpha=alpha, beta=beta)
    return image


def _blur_and_noise(image: np.ndarray, params: AugmentParams, rng: np.random.Generator) -> np.ndarray:
    radius = int(rng.integers(0, params.max_blur + 1))
    if radius > 0:
        image = cv2.GaussianBlur(image, (2 * radius + 1, 2 * radius + 1), 0)
    if params.max_noise > 0:
        noise = rng.integers(-params.max_noise, params.max_noise, size=image.shape, dtype=np.int16)
        image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return image


def augment(image: np.ndarray, mask: np.ndarray, params: AugmentParams, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy of an (H, W, 3) uint8 image and its (H, W) mask; the mask is only flipped."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    image = _blur_and_noise(_brightness(np.ascontiguousarray(image), params, rng), params, rng)
    return image, np.ascontiguousarray(mask)


def augment_photometric(image: np.ndarray, params: AugmentParams, rng: np.random.Generator) -> np.ndarray:
    """Blur and noise, then (p=0.5) the brightness change: the study's ``aug_photo``."""
    return _brightness(_blur_and_noise(image, params, rng), params, rng)
