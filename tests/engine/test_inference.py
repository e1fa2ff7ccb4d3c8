"""Sliding-window and multi-scale + flip inference against hand-computed results on toy models."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from cityscapes_lab.engine.inference import MS_SCALES, InferenceProtocol, infer, window_positions


def test_window_positions_shift_the_last_window_back():
    assert window_positions(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert window_positions(7, 4, 4) == [(0, 4), (3, 7)]
    assert window_positions(3, 4, 2) == [(0, 3)]  # the image is smaller than the window


class WindowMean(nn.Module):
    """Class 0: the mean of the window's first channel, everywhere in the window; class 1: 0.5."""

    def forward(self, x):
        n, _, h, w = x.shape
        mean = x[:, 0].mean(dim=(1, 2)).view(n, 1, 1, 1).expand(n, 1, h, w)
        return torch.cat([mean, torch.full((n, 1, h, w), 0.5)], dim=1)


def test_sliding_window_averages_overlapping_windows():
    image = torch.arange(4 * 10, dtype=torch.float32).view(1, 1, 4, 10).expand(1, 3, 4, 10) / 40
    protocol = InferenceProtocol("slide", crop=(4, 4), stride=(4, 3))
    scores = infer(WindowMean(), image, protocol, num_classes=2)
    # by hand: windows over columns (0,4), (3,7), (6,10); each pixel averages the means of its windows
    first = image[0, 0].numpy()
    means = [first[:, a:b].mean() for a, b in [(0, 4), (3, 7), (6, 10)]]
    expected = np.empty(10)
    for column in range(10):
        covering = [m for (a, b), m in zip([(0, 4), (3, 7), (6, 10)], means) if a <= column < b]
        expected[column] = sum(covering) / len(covering)
    probability = 1 / (1 + np.exp(0.5 - expected))  # softmax of (mean, 0.5), class 0
    assert np.allclose(scores[0, 0].numpy(), np.tile(probability, (4, 1)), atol=1e-6)


class Ramp(nn.Module):
    """Class 0: a left-to-right ramp 0..1 over the input's columns (whatever the pixels); class 1: 0.2."""

    def forward(self, x):
        n, _, h, w = x.shape
        ramp = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
        return torch.cat([ramp, torch.full((n, 1, h, w), 0.2)], dim=1)


def test_multi_scale_flip_softmax_mean():
    """Every scale gives the ramp (resizing a ramp with align_corners=True is exact); the flipped input gives
    the reversed ramp once flipped back; the result is the mean of the two softmaxes."""
    image = torch.rand(1, 3, 8, 16)
    protocol = InferenceProtocol("whole", scales=MS_SCALES, flip=True, combine="softmax", align_corners=True)
    scores = infer(Ramp(), image, protocol, num_classes=2)
    r = np.linspace(0, 1, 16)
    expected = 0.5 * (1 / (1 + np.exp(0.2 - r)) + 1 / (1 + np.exp(0.2 - (1 - r))))
    assert np.allclose(scores[0, 0].numpy(), np.tile(expected, (8, 1)), atol=1e-6)
    assert torch.allclose(scores.sum(dim=1), torch.ones(1, 8, 16))


def test_multi_scale_flip_hrnet_sums_exp_of_flipped_logit_sums():
    """HRNet-OCR's rule: per scale exp(logits + un-flipped logits of the flipped input), summed over scales:
    here exp(ramp + (1 - ramp)) = e for class 0 and exp(0.4) for class 1, six times."""
    image = torch.rand(1, 3, 8, 16)
    protocol = InferenceProtocol("whole", scales=MS_SCALES, flip=True, combine="hrnet", align_corners=True)
    scores = infer(Ramp(), image, protocol, num_classes=2)
    assert torch.allclose(scores[0, 0], torch.full((8, 16), 6 * math.e), rtol=1e-5)
    assert torch.allclose(scores[0, 1], torch.full((8, 16), 6 * math.exp(0.4)), rtol=1e-5)


def test_hrnet_multi_scale_slides_above_scale_one():
    """With slide_above=1, scales above 1 use windows of the crop size; windows see their own ramp."""
    image = torch.rand(1, 3, 4, 8)
    protocol = InferenceProtocol("whole", crop=(8, 8), stride=(8, 8), scales=(1.0, 2.0), combine="hrnet",
                                 slide_above=1.0, align_corners=True)
    scores = infer(Ramp(), image, protocol, num_classes=2)
    # scale 1: one ramp over 8 columns; scale 2 (8x16): two windows of 8 columns, each its own ramp, then the
    # 16-column map resized to 8 columns with align_corners=True (columns 0, 2.14, 4.29, ...)
    ramp8 = np.linspace(0, 1, 8)
    wide = np.concatenate([ramp8, ramp8])
    resized = np.interp(np.linspace(0, 15, 8), np.arange(16), np.exp(wide))
    expected = np.exp(ramp8) + resized
    assert np.allclose(scores[0, 0, 0].numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_single_scale_prediction_is_the_argmax_of_logits(mode):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1)
    image = torch.rand(2, 3, 16, 16)
    scores = infer(model, image, InferenceProtocol(mode, crop=(16, 16), stride=(16, 16)), num_classes=5)
    assert torch.equal(scores.argmax(1), model(image).argmax(1))
