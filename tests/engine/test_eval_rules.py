"""The semi-supervised community's evaluation rules against hand-computed results and hand-written restatements of
the official loops: UniMatch V1's truncated windows (``supervised.py`` ``evaluate``, mode sliding_window), UniMatch
V2's shifted windows, both softmax per window and summed, and U2PL's centre crop, whose labels must be cropped the
same way. Scaled-down windows on odd image sizes make the edge windows matter; a seeded conv net with padded
convolutions makes every window's content, size and borders change its logits."""

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from cityscapes_lab.data.layout import annotation_path
from cityscapes_lab.data.raw import open_raw, scan
from cityscapes_lab.engine.inference import InferenceProtocol, infer, unimatch_stride, window_positions
from cityscapes_lab.engine.prediction import PROTOCOLS, Predictor, predict_files, protocol_for
from cityscapes_lab.engine.runtime import Runtime
from cityscapes_lab.engine.zoo_eval import evaluate_on_raw
from cityscapes_lab.errors import DataError
from cityscapes_lab.labels import TRAINID_TO_LABELID
from cityscapes_lab.metrics.official import ConfusionMatrix, InstanceStats, official_scores
from cityscapes_lab.models.registry import model_spec

CLASSES = 5
SPEC = model_spec("unet_paper")  # any entry: the semi-supervised rules do not depend on it (align_corners aside)


class ToyNet(nn.Module):
    """Seeded padded convolutions (receptive field 7x7) on the uint8 image: logits depend on where a window ends."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, classes, 5, padding=2))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in self.net.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() / 127.5 - 1)


class WindowWidth(nn.Module):
    """Logits (0, width / 4) everywhere in a window of that width: class 1's softmax is sigmoid(width / 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return torch.cat([torch.zeros(n, 1, h, w), torch.full((n, 1, h, w), w / 4)], dim=1)


def images_of(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def assert_same_scores(scores: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(scores.argmax(1), expected.argmax(1))


@torch.no_grad()
def unimatch_v1_reference(model: nn.Module, img: torch.Tensor, grid: int) -> torch.Tensor:
    """UniMatch V1's loop, step by step: rows and columns advance by int(grid * 2 / 3) while below the side; each
    slice ends at min(side, start + grid); the window's softmax is added to ``final``; nothing divides it."""
    b, _, h, w = img.shape
    final = torch.zeros(b, CLASSES, h, w)
    row = 0
    while row < h:
        col = 0
        while col < w:
            rows, cols = slice(row, min(h, row + grid)), slice(col, min(w, col + grid))
            final[:, :, rows, cols] += model(img[:, :, rows, cols]).softmax(dim=1)
            col += int(grid * 2 / 3)
        row += int(grid * 2 / 3)
    return final


@torch.no_grad()
def unimatch_v2_reference(model: nn.Module, img: torch.Tensor, grid: int) -> torch.Tensor:
    """UniMatch V2's loop: full windows; the next start is min(start + int(grid * 2 / 3), side - grid), and the
    loop stops after the window that starts at side - grid; softmax per window, summed."""
    b, _, h, w = img.shape
    final = torch.zeros(b, CLASSES, h, w)
    row = 0
    while True:
        col = 0
        while True:
            final[:, :, row:row + grid, col:col + grid] += model(img[:, :, row:row + grid, col:col + grid]).softmax(1)
            if col == w - grid:
                break
            col = min(col + int(grid * 2 / 3), w - grid)
        if row == h - grid:
            break
        row = min(row + int(grid * 2 / 3), h - grid)
    return final


def test_window_positions_truncate_or_shift_the_edge_windows():
    # 23 rows, windows of 9 every 6: V1 starts at 0, 6, 12, 18 and cuts the last to 5 rows; V2 / mmseg end at 23
    assert window_positions(23, 9, 6, "truncate") == [(0, 9), (6, 15), (12, 21), (18, 23)]
    assert window_positions(23, 9, 6, "shift") == [(0, 9), (6, 15), (12, 21), (14, 23)]
    # a start below the side but past the last full window still gets a (1-pixel) window in V1
    assert window_positions(37, 9, 6, "truncate")[-2:] == [(30, 37), (36, 37)]
    assert window_positions(37, 9, 6, "shift")[-1] == (28, 37)
    # Cityscapes at 1024x2048 with UniMatch V1's 801 / 534 and V2's 798 / 532
    assert unimatch_stride(801) == 534 and unimatch_stride(798) == 532
    assert window_positions(1024, 801, 534, "truncate") == [(0, 801), (534, 1024)]
    assert window_positions(2048, 801, 534, "truncate") == [(0, 801), (534, 1335), (1068, 1869), (1602, 2048)]
    assert window_positions(1024, 801, 534) == [(0, 801), (223, 1024)]
    assert window_positions(2048, 801, 534) == [(0, 801), (534, 1335), (1068, 1869), (1247, 2048)]
    assert window_positions(1024, 798, 532) == [(0, 798), (226, 1024)]
    assert window_positions(2048, 798, 532) == [(0, 798), (532, 1330), (1064, 1862), (1250, 2048)]
    assert window_positions(5, 9, 6, "truncate") == window_positions(5, 9, 6) == [(0, 5)]  # smaller than a window


def test_unimatch_v1_sums_the_softmax_of_truncated_windows_by_hand():
    """One row of 10 columns, windows of 4 every int(4 * 2 / 3) = 2: V1 has (0,4) (2,6) (4,8) (6,10) and a truncated
    (8,10) of width 2, so columns 8-9 sum sigmoid(1) and sigmoid(0.5); shifted windows stop at (6,10)."""
    protocol = replace(protocol_for(SPEC, "slide-unimatch-v1"), crop=(1, 4), stride=(1, 2))
    scores = infer(WindowWidth(), images_of((1, 1, 10, 3)), protocol, num_classes=2)[0, 1, 0].numpy()
    full, half = 1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(-0.5))
    assert np.allclose(scores, [full] * 2 + [2 * full] * 6 + [full + half] * 2, atol=1e-6)
    shifted = infer(WindowWidth(), images_of((1, 1, 10, 3)), replace(protocol, edge="shift"), 2)[0, 1, 0].numpy()
    assert np.allclose(shifted, [full] * 2 + [2 * full] * 6 + [full] * 2, atol=1e-6)


@pytest.mark.parametrize("size", [(23, 37), (31, 20)])
def test_slide_unimatch_v1_follows_the_official_loop(size):
    model, images = ToyNet(), images_of((2, *size, 3))
    protocol = protocol_for(SPEC, "slide-unimatch-v1", window=9)
    assert (protocol.crop, protocol.stride, protocol.edge, protocol.overlap) == ((9, 9), (6, 6), "truncate", "sum")
    expected = unimatch_v1_reference(model, nchw(images), 9)
    scores = infer(model, images, protocol, CLASSES)
    assert_same_scores(scores, expected)
    # each rule matters: shifted edge windows change scores and classes; averaging changes the scores only
    shifted = infer(model, images, replace(protocol, edge="shift"), CLASSES)
    assert not torch.allclose(shifted, expected, atol=1e-3) and not torch.equal(shifted.argmax(1), expected.argmax(1))
    averaged = infer(model, images, replace(protocol, overlap="mean"), CLASSES)
    assert not torch.allclose(averaged, expected, atol=1e-3) and torch.equal(averaged.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("size", [(23, 37), (31, 20)])
def test_slide_shifted_follows_unimatch_v2(size):
    model, images = ToyNet(), images_of((2, *size, 3), seed=1)
    protocol = protocol_for(SPEC, "slide-shifted", window=9)
    assert (protocol.crop, protocol.stride, protocol.edge, protocol.overlap) == ((9, 9), (6, 6), "shift", "sum")
    expected = unimatch_v2_reference(model, nchw(images), 9)
    assert_same_scores(infer(model, images, protocol, CLASSES), expected)
    truncated = infer(model, images, replace(protocol, edge="truncate"), CLASSES)
    assert not torch.equal(truncated.argmax(1), expected.argmax(1))
    # mmseg's `slide` on the same windows averages logits and takes the softmax after: other classes
    mmseg = infer(model, images, InferenceProtocol("slide", (9, 9), (6, 6)), CLASSES)
    assert not torch.equal(mmseg.argmax(1), expected.argmax(1))
    averaged = infer(model, images, replace(protocol, overlap="mean"), CLASSES)
    assert not torch.allclose(averaged, expected, atol=1e-3) and torch.equal(averaged.argmax(1), expected.argmax(1))


def test_the_named_rules_at_cityscapes_size():
    v1, shifted, crop = (protocol_for(SPEC, name) for name in ("slide-unimatch-v1", "slide-shifted", "center-crop"))
    assert (v1.mode, v1.crop, v1.stride, v1.combine, v1.edge, v1.overlap) == (
        "slide", (801, 801), (534, 534), "unimatch", "truncate", "sum")
    assert replace(v1, edge="shift") == shifted
    assert (crop.mode, crop.score_crop, crop.scales, crop.flip) == ("whole", (769, 769), (1.0,), False)
    assert crop.region(1024, 2048) == (slice(127, 896), slice(639, 1408))  # U2PL: (1024 - 769) // 2, (2048 - 769) // 2
    assert protocol_for(SPEC, "slide-shifted", window=798).stride == (532, 532)
    with pytest.raises(DataError, match="choose whole, slide, ms-flip, slide-unimatch-v1"):
        protocol_for(SPEC, "sliding_window")


def test_center_crop_predicts_only_the_crop():
    model, images = ToyNet(), images_of((2, 24, 38, 3), seed=2)
    protocol = protocol_for(SPEC, "center-crop", window=9)
    assert protocol.region(24, 38) == (slice(7, 16), slice(14, 23))  # (24 - 9) // 2 = 7, (38 - 9) // 2 = 14
    scores = infer(model, images, protocol, CLASSES)
    with torch.no_grad():
        x = nchw(images)
        assert_same_scores(scores, torch.softmax(model(x[:, :, 7:16, 14:23]), dim=1))
        # offsets rounded up (8, 15), or the crop cut from the whole image's forward pass, give other scores
        assert not torch.allclose(scores, torch.softmax(model(x[:, :, 8:17, 15:24]), dim=1), atol=1e-3)
        assert not torch.allclose(scores, torch.softmax(model(x), dim=1)[:, :, 7:16, 14:23], atol=1e-3)
    assert protocol.scored(np.arange(24 * 38).reshape(24, 38))[0, 0] == 7 * 38 + 14
    with pytest.raises(DataError, match="smaller than the 9x9 centre crop"):
        protocol.region(8, 37)


def test_zoo_eval_scores_the_labels_of_the_centre_crop(raw_small):
    """The 512x256 val frames, a 101x203 crop at ((256 - 101) // 2, (512 - 203) // 2) = (77, 154): predictions and
    the ground truth (labelIds and instanceIds) cover the same pixels."""
    protocol = replace(protocol_for(SPEC, "center-crop"), score_crop=(101, 203))
    predictor = Predictor(ToyNet(19), 19, protocol, Runtime.cpu(channels_last=False))
    scored = evaluate_on_raw(predictor, raw_small, "val", limit=2, show_progress=False)

    index = open_raw(raw_small)
    confusion, instances = ConfusionMatrix(), InstanceStats()
    for frame in scan(index, {"val": "gtFine"})["val"][:2]:
        image = index.decode(frame.image)[..., :3]
        with torch.no_grad():
            classes = ToyNet(19)(nchw(image[None, 77:178, 154:357])).argmax(1)[0].numpy().astype(np.uint8)
        predicted = TRAINID_TO_LABELID[classes]
        assert np.array_equal(predictor(image), predicted) and len(np.unique(predicted)) > 1
        confusion.add(predicted, index.decode(frame.label)[77:178, 154:357])
        instances.add(predicted, index.decode(annotation_path("val", frame.frame, "instanceIds.png"))[77:178, 154:357])
    assert scored.images == 2
    np.testing.assert_equal(scored.scores.as_dict(), official_scores(confusion, instances).as_dict())  # NaN alike


def test_predict_writes_the_centre_crop(tmp_path):
    image = images_of((1, 23, 37, 3))[0]
    cv2.imwrite(str(tmp_path / "frame.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    predictor = Predictor(ToyNet(19), 19, protocol_for(SPEC, "center-crop", window=9), Runtime.cpu(channels_last=False))
    assert predict_files(predictor, [tmp_path / "frame.png"], tmp_path / "out") == 1
    for folder, shape in (("labelIds", (9, 9)), ("color", (9, 9, 3)), ("overlay", (9, 9, 3))):
        assert cv2.imread(str(tmp_path / "out" / folder / "frame.png"), cv2.IMREAD_UNCHANGED).shape == shape


def test_the_command_line_offers_every_named_protocol():
    from cityscapes_lab.cli import PROTOCOL_NAMES, cli

    assert PROTOCOL_NAMES == list(PROTOCOLS)
    for command in (cli.commands["zoo"].commands["eval"], cli.commands["predict"]):
        option = next(p for p in command.params if p.name == "protocol")
        assert list(option.type.choices) == list(PROTOCOLS)


def test_window_on_the_command_line(tmp_path, capsys):
    """--window sets the rule's window (or crop) from the command line, and is refused where a rule has none."""
    import json

    from oneline import expect_error, run_cli

    image = images_of((1, 40, 60, 3))[0]
    cv2.imwrite(str(tmp_path / "frame.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    args = ["predict", "--model", "segformer_b0", "--random-weights", tmp_path / "frame.png", "--no-color",
            "--no-overlay"]
    code, _, err = run_cli(args + ["--out", tmp_path / "crop", "--protocol", "center-crop", "--window", "32",
                                   "--json", tmp_path / "crop.json"], capsys)
    assert code == 0, err
    assert cv2.imread(str(tmp_path / "crop/labelIds/frame.png"), cv2.IMREAD_UNCHANGED).shape == (32, 32)
    assert json.loads((tmp_path / "crop.json").read_text())["window"] == 32
    code, _, err = run_cli(args + ["--out", tmp_path / "slide", "--protocol", "slide-shifted", "--window", "48"],
                           capsys)
    assert code == 0, err
    expect_error(args + ["--out", tmp_path / "whole", "--protocol", "whole", "--window", "24"], capsys,
                 "--window applies to the protocols slide-unimatch-v1, slide-shifted, center-crop")
    assert not (tmp_path / "whole").exists()
    # the study's U-Net sees every image resized to 416x208: a centre crop of the original cannot be scored
    expect_error(["predict", "--model", "unet_paper", "--random-weights", tmp_path / "frame.png", "--out",
                  tmp_path / "unet", "--protocol", "center-crop"], capsys, "sees every image resized to 416x208")
