"""The DCNv3 operator against the naive per-pixel loop; the DCNv3 module's shapes and gradients."""

from __future__ import annotations

import pytest
import torch

from cityscapes_lab.models.dcnv3 import DCNv3, dcnv3, dcnv3_reference

# kernel_h, kernel_w, stride, pad_h, pad_w, dilation, group, group_channels, offset_scale
SETTINGS = [
    (3, 3, 1, 1, 1, 1, 1, 1, 1.0),   # InternImage's own setting, offset_scale 1
    (3, 3, 1, 1, 1, 1, 2, 3, 2.0),   # ... with groups and the released offset_scale 2
    (5, 3, 1, 2, 1, 1, 2, 2, 1.0),   # non-square kernel, matching padding
    (3, 5, 2, 1, 2, 1, 1, 4, 2.0),   # stride 2
    (3, 3, 1, 2, 2, 2, 2, 2, 1.0),   # dilation 2
    (5, 3, 2, 3, 0, 2, 2, 3, 2.0),   # everything at once, no padding on one axis
    (1, 1, 1, 0, 0, 1, 2, 1, 1.0),   # a single point per group
]


def _inputs(kernel_h: int, kernel_w: int, stride: int, pad_h: int, pad_w: int, dilation: int, group: int,
            group_channels: int, spread: float = 2.5, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    n, height, width = 2, 6, 7
    h_out = (height + 2 * pad_h - (dilation * (kernel_h - 1) + 1)) // stride + 1
    w_out = (width + 2 * pad_w - (dilation * (kernel_w - 1) + 1)) // stride + 1
    points = kernel_h * kernel_w
    x = torch.randn(n, height, width, group * group_channels, dtype=torch.float64, generator=generator)
    # offsets of a few pixels: many samples land between pixels, some beyond the border (zero padding)
    shape = (n, h_out, w_out, group, points)
    offset = spread * torch.randn(*shape, 2, dtype=torch.float64, generator=generator).flatten(3)
    logits = torch.randn(*shape, dtype=torch.float64, generator=generator)
    return x, offset, logits.softmax(-1).flatten(3)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "k{}x{}-s{}-p{}{}-d{}-g{}x{}-os{}".format(*s))
def test_matches_naive_reference(setting):
    kernel_h, kernel_w, stride, pad_h, pad_w, dilation, group, group_channels, offset_scale = setting
    x, offset, mask = _inputs(kernel_h, kernel_w, stride, pad_h, pad_w, dilation, group, group_channels)
    args = (kernel_h, kernel_w, stride, stride, pad_h, pad_w, dilation, dilation, group, group_channels,
            offset_scale)
    fast, slow = dcnv3(x, offset, mask, *args), dcnv3_reference(x, offset, mask, *args)
    assert fast.shape == slow.shape == (*offset.shape[:3], group * group_channels)
    assert slow.abs().sum() > 0
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)


def test_reference_semantics_on_hand_made_cases():
    x = torch.arange(2 * 4 * 5 * 1, dtype=torch.float64).view(2, 4, 5, 1)
    one = torch.ones(2, 4, 5, 1, dtype=torch.float64)
    args = (1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1.0)
    for op in (dcnv3, dcnv3_reference):
        zero = torch.zeros(2, 4, 5, 2, dtype=torch.float64)
        close = lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=1e-12)  # noqa: E731
        close(op(x, zero, one, *args), x)  # a 1x1 kernel without offsets is the identity
        shift = zero.clone()
        shift[..., 0] = 1.0  # read one pixel to the right: the last column falls outside and reads 0
        expected = torch.cat([x[:, :, 1:], torch.zeros(2, 4, 1, 1, dtype=torch.float64)], 2)
        close(op(x, shift, one, *args), expected)
        half = zero.clone()
        half[..., 1] = 0.5  # half a pixel down: the mean of two rows, half of the last row
        expected = torch.cat([(x[:, :-1] + x[:, 1:]) / 2, x[:, -1:] / 2], 1)
        close(op(x, half, one, *args), expected)
        far = zero + 100.0  # every sample far outside the image
        assert op(x, far, one, *args).abs().max() == 0


def test_kernel_point_order_is_x_major():
    # a 3x3 kernel whose mask keeps only point 1: in x-major order that is the point left of the centre
    # (row-major order would make it the point above)
    x = torch.randn(1, 5, 5, 1, dtype=torch.float64)
    mask = torch.zeros(1, 5, 5, 9, dtype=torch.float64)
    mask[..., 1] = 1.0
    offset = torch.zeros(1, 5, 5, 18, dtype=torch.float64)
    for op in (dcnv3, dcnv3_reference):
        out = op(x, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1.0)
        torch.testing.assert_close(out[0, :, 1:, 0], x[0, :, :4, 0], rtol=0, atol=1e-12)


def test_float32_close_to_float64():
    x, offset, mask = _inputs(3, 3, 1, 1, 1, 1, 2, 4)
    args = (3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 2.0)
    torch.testing.assert_close(dcnv3(x.float(), offset.float(), mask.float(), *args),
                               dcnv3(x, offset, mask, *args).float(), rtol=1e-5, atol=1e-5)


def test_rejects_mismatched_shapes():
    x, offset, mask = _inputs(3, 3, 1, 1, 1, 1, 2, 4)
    with pytest.raises(ValueError, match="channels"):
        dcnv3(x, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, 2, 3, 1.0)
    with pytest.raises(ValueError, match="offset"):
        dcnv3(x, offset, mask, 3, 3, 2, 2, 1, 1, 1, 1, 2, 4, 1.0)


def test_operator_gradients():
    x, offset, mask = _inputs(3, 3, 1, 1, 1, 1, 2, 2, spread=0.7, seed=3)
    inputs = tuple(t[:1, :4, :5].clone().requires_grad_() for t in (x, offset, mask))
    assert torch.autograd.gradcheck(lambda a, b, c: dcnv3(a, b, c, 3, 3, 1, 1, 1, 1, 1, 1, 2, 2, 2.0), inputs)


def _module() -> DCNv3:
    torch.manual_seed(0)
    module = DCNv3(channels=8, group=2, offset_scale=2.0)
    with torch.no_grad():  # offsets start at zero (a regular grid); make them and the mask do something
        for layer in (module.offset, module.mask):
            layer.weight.normal_(0, 0.5)
            layer.bias.normal_(0, 0.5)
    return module


def test_module_parameters_and_shape():
    module = _module()
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {
        "dw_conv.0.weight": (8, 1, 3, 3), "dw_conv.0.bias": (8,),
        "dw_conv.1.1.weight": (8,), "dw_conv.1.1.bias": (8,),  # LayerNorm after a permute
        "offset.weight": (36, 8), "offset.bias": (36,), "mask.weight": (18, 8), "mask.bias": (18,),
        "input_proj.weight": (8, 8), "input_proj.bias": (8,),
        "output_proj.weight": (8, 8), "output_proj.bias": (8,),
    }
    out = module(torch.randn(2, 5, 6, 8))
    assert out.shape == (2, 5, 6, 8) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_module_gradients():
    module = _module()
    x = torch.randn(2, 5, 6, 8, requires_grad=True)
    module(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


def test_module_center_feature_scale():
    module = DCNv3(channels=8, group=2, center_feature_scale=True)
    assert module.center_feature_scale_proj_weight.shape == (2, 8)
    assert module.center_feature_scale_proj_bias.shape == (2,)
    assert module(torch.randn(1, 4, 4, 8)).shape == (1, 4, 4, 8)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x, offset, mask = _inputs(3, 3, 1, 1, 1, 1, 2, 4)
    args = (3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 2.0)
    cuda = dcnv3(x.cuda(), offset.cuda(), mask.cuda(), *args).cpu()
    torch.testing.assert_close(cuda, dcnv3(x, offset, mask, *args), rtol=0, atol=1e-10)


def test_half_precision_samples_in_float32():
    x, offset, mask = _inputs(3, 3, 1, 1, 1, 1, 2, 4)
    x, offset, mask = (t.bfloat16() for t in (x, offset, mask))
    args = (3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 2.0)
    out = dcnv3(x, offset, mask, *args)
    assert out.dtype == torch.bfloat16
    expected = dcnv3(x.double(), offset.double(), mask.double(), *args)
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)
