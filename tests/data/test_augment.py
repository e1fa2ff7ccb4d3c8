"""The study's offline augmentation on hand-made arrays."""

import cv2
import numpy as np

from cityscapes_lab.data.augment import AugmentParams, augment, augment_photometric

IMAGE = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
MASK = np.arange(24, dtype=np.uint8).reshape(4, 6)


def test_mask_is_only_flipped_and_image_keeps_its_shape():
    flips = 0
    for seed in range(20):
        image, mask = augment(IMAGE, MASK, AugmentParams(), np.random.default_rng(seed))
        assert image.shape == IMAGE.shape and image.dtype == np.uint8
        assert np.array_equal(mask, MASK) or np.array_equal(mask, MASK[:, ::-1])
        flips += not np.array_equal(mask, MASK)
    assert 4 <= flips <= 16  # p = 0.5


def test_brightness_follows_convert_scale_abs_and_noise_stays_in_range():
    params = AugmentParams(contrast=(1.2, 1.2), brightness=(-10.0, -10.0), max_blur=0, max_noise=0)
    outputs = {augment_photometric(IMAGE, params, np.random.default_rng(s)).tobytes() for s in range(10)}
    expected = cv2.convertScaleAbs(IMAGE, alpha=1.2, beta=-10.0)
    assert outputs == {IMAGE.tobytes(), expected.tobytes()}  # applied with p = 0.5
    noisy = augment_photometric(np.full((50, 50, 3), 100, np.uint8),
                                AugmentParams(contrast=(1, 1), brightness=(0, 0), max_blur=0, max_noise=3),
                                np.random.default_rng(0)).astype(int) - 100
    assert noisy.min() == -3 and noisy.max() == 2  # integers in [-max_noise, max_noise - 1]


def test_same_seed_same_copy():
    params = AugmentParams()
    first = augment(IMAGE, MASK, params, np.random.default_rng(5))
    second = augment(IMAGE, MASK, params, np.random.default_rng(5))
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
