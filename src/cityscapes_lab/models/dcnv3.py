"""DCNv3, InternImage's deformable convolution, in pure PyTorch: a ``grid_sample`` operator for CPU and
GPU, a naive per-pixel loop that defines the arithmetic (tests only), and the ``DCNv3`` module.

Tensors are channels-last (N, H, W, C). Kernel points are ordered x-major (the CUDA kernel loops over the
kernel's columns outside and its rows inside); each point's offset is an (x, y) pair; the mask is softmaxed.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def _check_shapes(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, kernel_h: int, kernel_w: int,
                  stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
                  group: int, group_channels: int) -> tuple[int, int]:
    n, h_in, w_in, c = input.shape
    h_out = _output_size(h_in, kernel_h, stride_h, pad_h, dilation_h)
    w_out = _output_size(w_in, kernel_w, stride_w, pad_w, dilation_w)
    points = group * kernel_h * kernel_w
    if c != group * group_channels:
        raise ValueError(f"input has {c} channels, expected {group} x {group_channels}")
    if tuple(offset.shape) != (n, h_out, w_out, 2 * points) or tuple(mask.shape) != (n, h_out, w_out, points):
        raise ValueError(f"offset {tuple(offset.shape)} / mask {tuple(mask.shape)} do not match the output "
                         f"({n}, {h_out}, {w_out}) with {points} sampling points")
    return h_out, w_out


def dcnv3(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, kernel_h: int, kernel_w: int,
          stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int,
          group_channels: int, offset_scale: float) -> torch.Tensor:
    """DCNv3 core: input (N, H, W, G*Cg), offsets (N, Ho, Wo, G*P*2), mask (N, Ho, Wo, G*P) -> output
    (N, Ho, Wo, G*Cg).

    Kernel point ``(i, j)`` of output pixel ``(oy, ox)`` is read at input pixel ``centre + (grid + offset) *
    offset_scale``, where ``centre = o * stride - pad + dilation * (kernel - 1) // 2`` and ``grid`` is
    ``i * dilation`` minus that half-span; values are read bilinearly (zeros outside the image) and summed,
    weighted by the mask. For pad_h == pad_w this is InternImage's ``dcnv3_core_pytorch``; otherwise it
    follows the CUDA kernel (the PyTorch version pads H by pad_w and W by pad_h).
    """
    h_out, w_out = _check_shapes(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                 dilation_h, dilation_w, group, group_channels)
    n, h_in, w_in, _ = input.shape
    points = kernel_h * kernel_w
    # locations and sampling in float32 at least: half precision cannot address the pixels of a large image
    dtype = torch.promote_types(torch.promote_types(input.dtype, offset.dtype), torch.float32)
    device = input.device
    half_h, half_w = dilation_h * (kernel_h - 1) // 2, dilation_w * (kernel_w - 1) // 2
    # fixed part of every sampling location, in input pixels: window centre plus the scaled regular grid
    cx = torch.arange(w_out, dtype=dtype, device=device) * stride_w + (half_w - pad_w)
    cy = torch.arange(h_out, dtype=dtype, device=device) * stride_h + (half_h - pad_h)
    centres = torch.stack(torch.meshgrid(cx, cy, indexing="xy"), -1)  # (Ho, Wo, 2) as (x, y)
    gx = torch.arange(kernel_w, dtype=dtype, device=device) * dilation_w - half_w
    gy = torch.arange(kernel_h, dtype=dtype, device=device) * dilation_h - half_h
    kernel = torch.stack(torch.meshgrid(gx, gy, indexing="ij"), -1).reshape(points, 2)  # x-major point order
    base = centres[:, :, None, :] + kernel * offset_scale  # (Ho, Wo, P, 2)
    loc = base[None, :, :, None] + offset.view(n, h_out, w_out, group, points, 2) * offset_scale
    # grid_sample with align_corners=False puts pixel k's centre at (2k + 1) / size - 1
    size = torch.tensor([w_in, h_in], dtype=dtype, device=device)
    grid = (2 * loc + 1) / size - 1
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(n * group, h_out * w_out, points, 2)
    value = input.to(dtype).reshape(n, h_in, w_in, group, group_channels).permute(0, 3, 4, 1, 2)
    value = value.reshape(n * group, group_channels, h_in, w_in)
    sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    weights = mask.reshape(n, h_out * w_out, group, points).transpose(1, 2).reshape(n * group, 1, -1, points)
    out = (sampled * weights.to(dtype)).sum(-1)  # (N*G, Cg, Ho*Wo)
    out = out.view(n, group * group_channels, h_out * w_out).transpose(1, 2).reshape(n, h_out, w_out, -1)
    return out.to(input.dtype)


def _bilinear(image: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """``image`` (H, W, C) read at pixel coordinates (y, x); neighbours outside the image count as 0."""
    height, width, _ = image.shape
    y0, x0 = math.floor(y), math.floor(x)
    fy, fx = y - y0, x - x0
    value = image.new_zeros(image.shape[-1])
    for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            if 0 <= yy < height and 0 <= xx < width:
                value = value + (wy * wx) * image[yy, xx]
    return value


def dcnv3_reference(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, kernel_h: int,
                    kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                    dilation_w: int, group: int, group_channels: int, offset_scale: float) -> torch.Tensor:
    """``dcnv3`` written as one loop per output pixel, group and kernel point: slow, for tests only."""
    h_out, w_out = _check_shapes(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                 dilation_h, dilation_w, group, group_channels)
    n = input.shape[0]
    points = kernel_h * kernel_w
    half_h, half_w = dilation_h * (kernel_h - 1) // 2, dilation_w * (kernel_w - 1) // 2
    out = input.new_zeros(n, h_out, w_out, group * group_channels)
    for b in range(n):
        for oy in range(h_out):
            for ox in range(w_out):
                centre_y, centre_x = oy * stride_h - pad_h + half_h, ox * stride_w - pad_w + half_w
                for g in range(group):
                    channels = slice(g * group_channels, (g + 1) * group_channels)
                    for i in range(kernel_w):  # columns outside, rows inside: the published point order
                        for j in range(kernel_h):
                            k = g * points + i * kernel_h + j
                            dx, dy = float(offset[b, oy, ox, 2 * k]), float(offset[b, oy, ox, 2 * k + 1])
                            x = centre_x + (i * dilation_w - half_w + dx) * offset_scale
                            y = centre_y + (j * dilation_h - half_h + dy) * offset_scale
                            sample = _bilinear(input[b, :, :, channels], y, x)
                            out[b, oy, ox, channels] += mask[b, oy, ox, k] * sample
    return out


class Permute(nn.Module):
    """Reorders dimensions; kept inside InternImage's norm Sequentials, so they shift the norms' keys."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def build_norm(kind: str, dim: int, in_first: bool = False, out_first: bool = False,
               eps: float = 1e-6) -> nn.Sequential:
    """LayerNorm ('LN', on channels-last) or BatchNorm ('BN', on channels-first) with the permutes needed to
    go from the input layout to the output one (``*_first``: channels-first NCHW, else channels-last NHWC)."""
    if kind == "LN":
        layers = [Permute(0, 2, 3, 1)] if in_first else []
        layers.append(nn.LayerNorm(dim, eps=eps))
        layers += [Permute(0, 3, 1, 2)] if out_first else []
    elif kind == "BN":
        layers = [] if in_first else [Permute(0, 3, 1, 2)]
        layers.append(nn.BatchNorm2d(dim))
        layers += [] if out_first else [Permute(0, 2, 3, 1)]
    else:
        raise ValueError(f"unknown norm layer {kind!r}; expected 'LN' or 'BN'")
    return nn.Sequential(*layers)


def activation(kind: str) -> nn.Module:
    """The activations InternImage's configs can name."""
    layers = {"GELU": nn.GELU, "ReLU": nn.ReLU, "SiLU": nn.SiLU}
    if kind not in layers:
        raise ValueError(f"unknown activation {kind!r}; expected one of {', '.join(layers)}")
    return layers[kind]()


class DCNv3(nn.Module):
    """The DCNv3 operator block on (N, H, W, C): input projection, offsets and softmaxed mask predicted from a
    depthwise conv + norm + activation branch, deformable sampling, output projection."""

    def __init__(self, channels: int = 64, kernel_size: int = 3, dw_kernel_size: int | None = None,
                 stride: int = 1, pad: int = 1, dilation: int = 1, group: int = 4, offset_scale: float = 1.0,
                 act_layer: str = "GELU", norm_layer: str = "LN", center_feature_scale: bool = False):
        super().__init__()
        if channels % group:
            raise ValueError(f"channels ({channels}) must be divisible by group ({group})")
        self.channels, self.kernel_size, self.dilation = channels, kernel_size, dilation
        self.stride, self.pad = stride, pad
        self.group, self.group_channels, self.offset_scale = group, channels // group, offset_scale
        dw = dw_kernel_size or kernel_size
        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, dw, padding=(dw - 1) // 2, groups=channels),
            build_norm(norm_layer, channels, in_first=True), activation(act_layer))
        self.offset = nn.Linear(channels, group * kernel_size * kernel_size * 2)
        self.mask = nn.Linear(channels, group * kernel_size * kernel_size)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self.center_feature_scale = center_feature_scale
        if center_feature_scale:  # InternImage-H/G: a learned per-group blend with the undeformed projection
            self.center_feature_scale_proj_weight = nn.Parameter(torch.zeros(group, channels))
            self.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero offsets, so that an untrained block samples the regular grid; PyTorch's defaults elsewhere.

        Upstream also zeroes the mask layer, which leaves ``dw_conv`` without any gradient until the offset
        and mask weights have moved; a default-initialised mask layer keeps every parameter trainable at once.
        """
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = x.shape
        projected = self.input_proj(x)
        features = self.dw_conv(x.permute(0, 3, 1, 2))  # channels-last again after its norm
        offset = self.offset(features)
        mask = self.mask(features).view(n, h, w, self.group, -1).softmax(-1).view(n, h, w, -1)
        k = self.kernel_size
        out = dcnv3(projected, offset, mask.to(projected.dtype), k, k, self.stride, self.stride, self.pad,
                    self.pad, self.dilation, self.dilation, self.group, self.group_channels,
                    self.offset_scale)
        if self.center_feature_scale:
            scale = F.linear(features, self.center_feature_scale_proj_weight,
                             self.center_feature_scale_proj_bias).sigmoid()
            scale = scale.repeat_interleave(self.group_channels, dim=-1)
            out = out * (1 - scale) + projected * scale
        return self.output_proj(out)
