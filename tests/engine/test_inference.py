"""Sliding-window and multi-scale + flip inference against hand-computed results: analytic toy models, and
references that follow the official code's order of operations step by step (HRNet-OCR's branch HRNet-OCR,
mmsegmentation 0.27 with mmcv 1.5) on a seeded conv net."""

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cityscapes_lab.engine.inference import (MS_SCALES, InferenceProtocol, hrnet_size, infer, mmseg_size,
                                             window_positions)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, as both official pipelines
CLASSES = 4


def test_window_positions_shift_the_last_window_back():
    assert window_positions(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert window_positions(7, 4, 4) == [(0, 4), (3, 7)]
    assert window_positions(3, 4, 2) == [(0, 3)]  # the image is smaller than the window


def test_scaled_sizes_round_as_the_official_code():
    # HRNet: long side int(53 * 0.75 + 0.5) = 40, short int(37 * 40 / 53 + 0.5) = 28; portrait the other way
    assert hrnet_size(37, 53, 0.75) == (28, 40) and hrnet_size(53, 37, 0.75) == (40, 28)
    # mmseg: bound (int(53 * 0.75), int(37 * 0.75)) = (39, 27), factor min(39 / 53, 27 / 37) = 27 / 37
    assert mmseg_size(37, 53, 0.75) == (27, 39) and mmseg_size(53, 37, 0.75) == (39, 27)
    assert hrnet_size(1024, 2048, 1.75) == mmseg_size(1024, 2048, 1.75) == (1792, 3584)  # Cityscapes: exact
    assert all(rule(37, 53, 1.0) == (37, 53) for rule in (hrnet_size, mmseg_size))


class WindowMean(nn.Module):
    """Class 0: the mean of the window's first channel / 40, everywhere in the window; class 1: 0.5."""

    def forward(self, x):
        n, _, h, w = x.shape
        mean = x[:, 0].float().mean(dim=(1, 2)).view(n, 1, 1, 1).expand(n, 1, h, w) / 40
        return torch.cat([mean, torch.full((n, 1, h, w), 0.5)], dim=1)


def test_sliding_window_averages_overlapping_windows():
    image = np.repeat(np.arange(4 * 10, dtype=np.uint8).reshape(1, 4, 10, 1), 3, axis=3)
    protocol = InferenceProtocol("slide", crop=(4, 4), stride=(4, 3))
    scores = infer(WindowMean(), image, protocol, num_classes=2)
    # by hand: windows over columns (0,4), (3,7), (6,10); each pixel averages the means of its windows
    first = image[0, :, :, 0] / 40
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


def random_images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_multi_scale_flip_softmax_mean():
    """Every scale gives the ramp (resizing a ramp with align_corners=True is exact); the flipped input gives
    the reversed ramp once flipped back; the result is the mean of the two softmaxes."""
    protocol = InferenceProtocol("whole", scales=MS_SCALES, flip=True, combine="softmax", align_corners=True)
    scores = infer(Ramp(), random_images((1, 8, 16, 3)), protocol, num_classes=2)
    r = np.linspace(0, 1, 16)
    expected = 0.5 * (1 / (1 + np.exp(0.2 - r)) + 1 / (1 + np.exp(0.2 - (1 - r))))
    assert np.allclose(scores[0, 0].numpy(), np.tile(expected, (8, 1)), atol=1e-6)
    assert torch.allclose(scores.sum(dim=1), torch.ones(1, 8, 16))


def test_multi_scale_flip_hrnet_sums_exp_of_the_mean_of_flipped_logits():
    """HRNet-OCR's rule: per scale exp((logits + un-flipped logits of the flipped input) * 0.5), summed over
    scales: here exp((ramp + (1 - ramp)) / 2) = exp(0.5) for class 0 and exp(0.2) for class 1, six times."""
    protocol = InferenceProtocol("whole", scales=MS_SCALES, flip=True, combine="hrnet", align_corners=True)
    scores = infer(Ramp(), random_images((1, 8, 16, 3)), protocol, num_classes=2)
    assert torch.allclose(scores[0, 0], torch.full((8, 16), 6 * np.exp(0.5)), rtol=1e-5)
    assert torch.allclose(scores[0, 1], torch.full((8, 16), 6 * np.exp(0.2)), rtol=1e-5)


def test_hrnet_multi_scale_slides_above_scale_one():
    """With slide_above=1, scales above 1 use windows of the crop size; windows see their own ramp."""
    protocol = InferenceProtocol("whole", crop=(8, 8), stride=(8, 8), scales=(1.0, 2.0), combine="hrnet",
                                 slide_above=1.0, align_corners=True)
    scores = infer(Ramp(), random_images((1, 4, 8, 3)), protocol, num_classes=2)
    # scale 1: one ramp over 8 columns; scale 2 (8x16): two windows of 8 columns, each its own ramp, then the
    # 16-column map resized to 8 columns with align_corners=True (columns 0, 2.14, 4.29, ...)
    ramp8 = np.linspace(0, 1, 8)
    wide = np.concatenate([ramp8, ramp8])
    resized = np.interp(np.linspace(0, 15, 8), np.arange(16), np.exp(wide))
    expected = np.exp(ramp8) + resized
    assert np.allclose(scores[0, 0, 0].numpy(), expected, rtol=1e-5)


class ToyNet(nn.Module):
    """A small seeded conv net that normalises its input itself (uint8, or float in [0, 1]) as the zoo's models;
    ``core`` takes normalised images, so that a reference can normalise where the official code does. Padded 3x3
    convolutions make windows, borders and flips matter."""

    def __init__(self):
        super().__init__()
        self.core = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, CLASSES, 3, padding=1))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter, scale in zip(self.core.parameters(), (0.2, 0.1, 0.25, 0.1)):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, images):
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        return self.core((x - self.mean) / self.std)


def chw(array: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) array as a (1, 3, H, W) tensor, as the official loaders hand it to the model."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


@torch.no_grad()
def hrnet_reference(core: nn.Module, image: np.ndarray, scales: tuple[float, ...],
                    crop: tuple[int, int]) -> torch.Tensor:
    """HRNet-OCR, one (H, W, 3) uint8 image: ``input_transform`` normalises the float image; per scale
    ``multi_scale_aug`` resizes it with cv2 (the floats); scale <= 1 runs ``inference`` on the whole image, above
    on windows of ``crop`` every ``crop`` (the last shifted back), averaged; the map is resized to the original
    size (align_corners=True) and summed over scales. ``inference``: exp of the mean of the logits and the
    un-flipped logits of the flipped input."""
    height, width = image.shape[:2]
    normalised = image.astype(np.float32) / 255.0
    normalised -= MEAN
    normalised /= STD

    def inference(x: torch.Tensor) -> torch.Tensor:
        pred = core(x)
        pred += core(x.flip(3)).flip(3)
        pred = pred * 0.5
        return pred.exp()

    final = torch.zeros(1, CLASSES, height, width)
    for scale in scales:
        long_size = int(max(height, width) * scale + 0.5)  # base_size: 2048 for Cityscapes, the long side here
        if height > width:
            new_h, new_w = long_size, int(width * long_size / height + 0.5)
        else:
            new_h, new_w = int(height * long_size / width + 0.5), long_size
        new_img = chw(cv2.resize(normalised, (new_w, new_h), interpolation=cv2.INTER_LINEAR))
        if scale <= 1.0:
            preds = inference(new_img)
        else:
            preds, count = torch.zeros(1, CLASSES, new_h, new_w), torch.zeros(1, 1, new_h, new_w)
            rows = int(np.ceil((new_h - crop[0]) / crop[0])) + 1
            cols = int(np.ceil((new_w - crop[1]) / crop[1])) + 1
            for r in range(rows):
                for c in range(cols):
                    h1, w1 = min(r * crop[0] + crop[0], new_h), min(c * crop[1] + crop[1], new_w)
                    h0, w0 = max(h1 - crop[0], 0), max(w1 - crop[1], 0)
                    preds[:, :, h0:h1, w0:w1] += inference(new_img[:, :, h0:h1, w0:w1])
                    count[:, :, h0:h1, w0:w1] += 1
            preds = preds / count
        final += F.interpolate(preds, (height, width), mode="bilinear", align_corners=True)
    return final


@torch.no_grad()
def mmseg_reference(core: nn.Module, image: np.ndarray, ratios: tuple[float, ...]) -> torch.Tensor:
    """mmseg 0.x, one (H, W, 3) uint8 image: ``MultiScaleFlipAug`` (img_scale None: the image's (W, H) times each
    ratio, truncated; flip False then True) -> ``Resize(keep_ratio=True)`` (mmcv ``rescale_size``, then
    ``imresize``: cv2 on the uint8 image) -> ``RandomFlip`` -> ``Normalize``; ``EncoderDecoder.aug_test``: per
    view ``whole_inference`` (logits resized to the original size, align_corners=False), softmax, flipped back,
    summed view by view, divided by the number of views."""
    height, width = image.shape[:2]
    seg_logit, views = None, 0
    for ratio in ratios:
        scale = (int(width * ratio), int(height * ratio))
        scale_factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
        new_size = (int(width * scale_factor + 0.5), int(height * scale_factor + 0.5))
        resized = cv2.resize(image, new_size, interpolation=cv2.INTER_LINEAR)
        for flip in (False, True):
            img = (resized[:, ::-1] if flip else resized).astype(np.float32)
            img -= np.array(MEAN) * 255
            img *= 1 / (np.array(STD) * 255)
            logit = F.interpolate(core(chw(img)), (height, width), mode="bilinear", align_corners=False)
            output = torch.softmax(logit, dim=1)
            output = output.flip(3) if flip else output
            seg_logit = output if seg_logit is None else seg_logit + output
            views += 1
    return seg_logit / views


def assert_same_scores(scores: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(scores.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("size", [(26, 43), (45, 31)])
def test_hrnet_multi_scale_flip_follows_the_official_code(size):
    """Six scales with flip; at 1.25-1.75 the scaled image is cut into overlapping windows of the original size
    (the registry's 1024x2048 crop on Cityscapes)."""
    model, images = ToyNet(), random_images((2, *size, 3))
    protocol = InferenceProtocol("whole", size, size, MS_SCALES, True, "hrnet", 1.0, align_corners=True)
    expected = torch.cat([hrnet_reference(model.core, image, MS_SCALES, size) for image in images])
    assert_same_scores(infer(model, images, protocol, CLASSES), expected)


@pytest.mark.parametrize("size", [(26, 43), (45, 31)])
def test_mmseg_multi_scale_flip_follows_the_official_code(size):
    model, images = ToyNet(), random_images((2, *size, 3))
    protocol = InferenceProtocol("whole", scales=MS_SCALES, flip=True, combine="softmax", align_corners=False)
    expected = torch.cat([mmseg_reference(model.core, image, MS_SCALES) for image in images])
    assert_same_scores(infer(model, images, protocol, CLASSES), expected)


@torch.no_grad()
def test_single_scale_whole_and_slide_are_the_softmax_of_the_logits():
    """Unchanged by the multi-scale rules: whole = softmax of the logits of the image as it is; slide = softmax
    of the logits of mmseg's windows (``slide_inference``: every stride, the last shifted back) averaged."""
    model, images = ToyNet(), random_images((2, 37, 53, 3))
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    whole = infer(model, images, InferenceProtocol("whole"), CLASSES)
    assert_same_scores(whole, torch.softmax(model(x), dim=1))

    (h_crop, w_crop), (h_stride, w_stride) = (16, 24), (11, 15)
    preds, count = torch.zeros(2, CLASSES, 37, 53), torch.zeros(2, 1, 37, 53)
    for h_idx in range(max(37 - h_crop + h_stride - 1, 0) // h_stride + 1):
        for w_idx in range(max(53 - w_crop + w_stride - 1, 0) // w_stride + 1):
            y2, x2 = min(h_idx * h_stride + h_crop, 37), min(w_idx * w_stride + w_crop, 53)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            preds[:, :, y1:y2, x1:x2] += model(x[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
    slid = infer(model, images, InferenceProtocol("slide", (h_crop, w_crop), (h_stride, w_stride)), CLASSES)
    assert_same_scores(slid, torch.softmax(preds / count, dim=1))
    assert not torch.equal(slid.argmax(1), whole.argmax(1))  # the windows matter


@pytest.mark.gpu
@pytest.mark.parametrize("protocol", [
    InferenceProtocol("whole", (16, 16), (16, 16), MS_SCALES, True, "hrnet", 1.0, align_corners=True),
    InferenceProtocol("whole", scales=MS_SCALES, flip=True, combine="softmax", align_corners=False),
    InferenceProtocol("slide", (16, 24), (11, 15)),
    InferenceProtocol("slide", (20, 20), (13, 13), edge="truncate", combine="unimatch", overlap="sum"),
], ids=["hrnet-ms-flip", "mmseg-ms-flip", "slide", "slide-unimatch"])
def test_cuda_gives_the_cpu_scores(protocol):
    """Every rule on the GPU (channels-last, fp32 without TF32) gives the CPU's score maps."""
    from cuda_precision import full_fp32_on_cuda

    from cityscapes_lab.engine.runtime import Runtime

    model, images = ToyNet(), random_images((2, 37, 53, 3))
    expected = infer(model, images, protocol, CLASSES)
    with full_fp32_on_cuda():
        scores = infer(model.cuda(), images, protocol, CLASSES, Runtime(torch.device("cuda"))).cpu()
    assert_same_scores(scores, expected)


def test_window_passes_group_consecutive_windows_of_one_shape():
    """UniMatch V1's truncated windows of a 6x8 image (windows of 4 every 3): rows (0,4) and (3,6) of heights 4
    and 3, columns (0,4), (3,7), (6,8) of widths 4, 4, 2. Up to 32 pixels a pass, the two 4x4 windows share one,
    the two 3x4 windows another, each narrow one has its own; up to 16 pixels every window is alone, as with no
    budget; the order of the windows never changes."""
    from cityscapes_lab.engine.inference import window_passes

    rows, columns = window_positions(6, 4, 3, "truncate"), window_positions(8, 4, 3, "truncate")
    assert (rows, columns) == ([(0, 4), (3, 6)], [(0, 4), (3, 7), (6, 8)])
    a, b, c, d, e, f = ((y1, y2, x1, x2) for y1, y2 in rows for x1, x2 in columns)
    assert window_passes(rows, columns, 32) == [[a, b], [c], [d, e], [f]]
    assert window_passes(rows, columns, 16) == window_passes(rows, columns, None) == [[w] for w in (a, b, c, d, e, f)]


class CountedNet(ToyNet):
    """ToyNet that counts its forward passes."""

    passes = 0

    def forward(self, images):
        self.passes += 1
        return super().forward(images)


@pytest.mark.parametrize("protocol", [
    InferenceProtocol("slide", (20, 20), (13, 13), edge="truncate", combine="unimatch", overlap="sum"),
    InferenceProtocol("slide", (16, 24), (11, 15)),
    InferenceProtocol("whole", (16, 16), (16, 16), (1.0, 1.5), True, "hrnet", 1.0, align_corners=True),
], ids=["slide-unimatch-v1", "slide", "hrnet-ms-flip"])
def test_windows_sharing_a_pass_give_the_scores_of_one_window_at_a_time(protocol):
    """Batched windows (the default on a GPU) take fewer forward passes and give the score map of one window at
    a time, as the official code predicts (the default on the CPU)."""
    from cityscapes_lab.engine.runtime import Runtime

    images = random_images((1, 37, 53, 3))
    alone, batched = CountedNet(), CountedNet()
    expected = infer(alone, images, protocol, CLASSES, Runtime.cpu(channels_last=False))
    scores = infer(batched, images, protocol, CLASSES, Runtime.cpu(channels_last=False, batch_windows=True))
    assert_same_scores(scores, expected)
    assert torch.equal(scores.argmax(1), expected.argmax(1))
    assert batched.passes < alone.passes
