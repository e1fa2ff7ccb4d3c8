"""Consistency loss (notes 5.3): LDT's best model alternates a supervised pass over the labeled images with a pass
over the unlabeled ones that pulls the softmax of two independent photometric views together: the
``consistency`` kind of the one training loop (``engine.kinds``), at one of three augmentation strengths.

Fixed against the original: both views are RGB, as the labeled images are (the original fed the unlabeled
images in OpenCV's BGR order, notes 8.6). Kept: the checkpoint with the lowest validation cross-entropy
(checked after each of the two passes), the study's AdamW and learning rate, 100 epochs.
"""

from __future__ import annotations

from ..data.augment import AugmentParams

#: strength (the approach's n) -> photometric augmentation of the two views (notes 5.3: low, mid, high)
STRENGTHS: dict[int, AugmentParams] = {
    1: AugmentParams((0.95, 1.05), (-3.0, 3.0), max_blur=0, max_noise=3),
    2: AugmentParams((0.8, 1.2), (-9.0, 9.0), max_blur=0, max_noise=9),
    3: AugmentParams((0.6, 1.4), (-15.0, 15.0), max_blur=1, max_noise=15),
}
