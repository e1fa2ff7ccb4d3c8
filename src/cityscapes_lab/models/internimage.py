"""The InternImage backbone (Wang et al., CVPR 2023) with DCNv3 blocks, in the module layout of OpenGVLab's
segmentation code so that its checkpoints load by name; it returns the four stage maps in NCHW."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import DropPath
from .dcnv3 import DCNv3, activation, build_norm
from .recompute import checkpointed


class StemLayer(nn.Module):
    """Two stride-2 3x3 convs (to half, then full width), norm and activation: NCHW image -> NHWC at 1/4."""

    def __init__(self, out_channels: int, act_layer: str = "GELU", norm_layer: str = "LN"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels // 2, 3, stride=2, padding=1)
        self.norm1 = build_norm(norm_layer, out_channels // 2, in_first=True, out_first=True)
        self.act = activation(act_layer)
        self.conv2 = nn.Conv2d(out_channels // 2, out_channels, 3, stride=2, padding=1)
        self.norm2 = build_norm(norm_layer, out_channels, in_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class DownsampleLayer(nn.Module):
    """Stride-2 3x3 conv (no bias) doubling the width, then norm: NHWC -> NHWC at half the resolution."""

    def __init__(self, channels: int, norm_layer: str = "LN"):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.norm = build_norm(norm_layer, 2 * channels, in_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class MLPLayer(nn.Module):
    """Two linear layers with an activation between them, on channels-last features."""

    def __init__(self, channels: int, hidden: int, act_layer: str = "GELU", drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = activation(act_layer)
        self.fc2 = nn.Linear(hidden, channels)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class InternImageLayer(nn.Module):
    """One block: a DCNv3 residual branch and an MLP residual branch, each with its LayerNorm before
    (pre-norm) or after (``post_norm``) the branch, optionally scaled per channel (``layer_scale``)."""

    def __init__(self, channels: int, groups: int, mlp_ratio: float = 4.0, drop: float = 0.0,
                 drop_path: float = 0.0, act_layer: str = "GELU", norm_layer: str = "LN",
                 post_norm: bool = False, layer_scale: float | None = None, offset_scale: float = 1.0,
                 dw_kernel_size: int | None = None, res_post_norm: bool = False,
                 center_feature_scale: bool = False):
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = build_norm("LN", channels)
        self.dcn = DCNv3(channels, kernel_size=3, dw_kernel_size=dw_kernel_size, stride=1, pad=1, dilation=1,
                         group=groups, offset_scale=offset_scale, act_layer=act_layer, norm_layer=norm_layer,
                         center_feature_scale=center_feature_scale)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = build_norm("LN", channels)
        self.mlp = MLPLayer(channels, int(channels * mlp_ratio), act_layer, drop)
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(torch.full((channels,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((channels,), float(layer_scale)))
        # upstream applies these extra norms only in pre-norm blocks without layer scale (InternImage-H/G)
        self.res_post_norm = res_post_norm and not post_norm and not self.layer_scale
        if res_post_norm:
            self.res_post_norm1 = build_norm("LN", channels)
            self.res_post_norm2 = build_norm("LN", channels)

    def _branch(self, x: torch.Tensor, branch: nn.Module, norm: nn.Module, index: int) -> torch.Tensor:
        out = norm(branch(x)) if self.post_norm else branch(norm(x))
        if self.res_post_norm:
            out = getattr(self, f"res_post_norm{index}")(out)
        if self.layer_scale:
            out = getattr(self, f"gamma{index}") * out
        return self.drop_path(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._branch(x, self.dcn, self.norm1, 1)
        return x + self._branch(x, self.mlp, self.norm2, 2)


class InternImageLevel(nn.Module):
    """One stage: ``depth`` blocks, a closing norm when the blocks are pre-norm, then the downsampling layer
    (all but the last stage). ``forward`` returns (input to the next stage, this stage's output)."""

    def __init__(self, channels: int, depth: int, groups: int, downsample: bool, drop_path: Sequence[float],
                 post_norm: bool = False, center_feature_scale: bool = False,
                 post_norm_block_ids: Sequence[int] | None = None, norm_layer: str = "LN", **block_options):
        super().__init__()
        self.blocks = nn.ModuleList([
            InternImageLayer(channels, groups, drop_path=drop_path[i], post_norm=post_norm,
                             norm_layer=norm_layer, center_feature_scale=center_feature_scale,
                             **block_options)
            for i in range(depth)])
        self.has_norm = not post_norm or center_feature_scale
        if self.has_norm:
            self.norm = build_norm("LN", channels)
        # InternImage-H/G: extra LayerNorms after selected blocks of the third stage
        self.post_norm_block_ids = list(post_norm_block_ids or [])
        if self.post_norm_block_ids:
            self.post_norms = nn.ModuleList([build_norm("LN", channels) for _ in self.post_norm_block_ids])
        self.downsample = DownsampleLayer(channels, norm_layer) if downsample else None

    def forward(self, x: torch.Tensor, recompute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        for i, block in enumerate(self.blocks):
            x = checkpointed(block, x) if recompute else block(x)
            if i in self.post_norm_block_ids:
                x = self.post_norms[self.post_norm_block_ids.index(i)](x)
        if self.has_norm:
            x = self.norm(x)
        return (x if self.downsample is None else self.downsample(x)), x


class InternImage(nn.Module):
    """InternImage backbone. Input (N, 3, H, W) normalised images; output the ``out_indices`` stage maps
    (N, channels * 2**i, H / 2**(i+2), W / 2**(i+2)), NCHW.

    ``recompute = True`` reruns every block in the backward pass instead of keeping its activations.
    """

    recompute: bool = False

    def __init__(self, channels: int = 64, depths: Sequence[int] = (3, 4, 18, 5),
                 groups: Sequence[int] = (3, 6, 12, 24), mlp_ratio: float = 4.0, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, drop_path_type: str = "linear", act_layer: str = "GELU",
                 norm_layer: str = "LN", layer_scale: float | None = None, offset_scale: float = 1.0,
                 post_norm: bool = False, dw_kernel_size: int | None = None, level2_post_norm: bool = False,
                 level2_post_norm_block_ids: Sequence[int] | None = None, res_post_norm: bool = False,
                 center_feature_scale: bool = False, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        if len(depths) != len(groups):
            raise ValueError(f"depths {list(depths)} and groups {list(groups)} must have the same length")
        self.out_indices = tuple(out_indices)
        self.num_features = [channels * 2 ** i for i in range(len(depths))]
        self.patch_embed = StemLayer(channels, act_layer, norm_layer)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depths)
        # stochastic depth grows linearly over all blocks of the network ('uniform': the same everywhere)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        if drop_path_type == "uniform":
            rates = [drop_path_rate] * total
        self.levels = nn.ModuleList()
        for i, (depth, group) in enumerate(zip(depths, groups)):
            start = sum(depths[:i])
            self.levels.append(InternImageLevel(
                self.num_features[i], depth, group, downsample=i < len(depths) - 1,
                drop_path=rates[start:start + depth], post_norm=post_norm,
                center_feature_scale=center_feature_scale,
                post_norm_block_ids=level2_post_norm_block_ids if level2_post_norm and i == 2 else None,
                norm_layer=norm_layer, mlp_ratio=mlp_ratio, drop=drop_rate, act_layer=act_layer,
                layer_scale=layer_scale, offset_scale=offset_scale, dw_kernel_size=dw_kernel_size,
                res_post_norm=res_post_norm))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        recompute = self.recompute and self.training and torch.is_grad_enabled()
        x = self.pos_drop(self.patch_embed(x))
        outputs = []
        for i, level in enumerate(self.levels):
            x, stage = level(x, recompute)
            if i in self.out_indices:
                outputs.append(stage.permute(0, 3, 1, 2).contiguous())
        return outputs
