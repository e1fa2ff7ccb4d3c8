"""SegFormer (Xie et al., NeurIPS 2021): a Mix Transformer (MiT) encoder and an all-MLP decoder, in plain
PyTorch.

Module names follow the Hugging Face checkpoints ``nvidia/segformer-b{0..5}-finetuned-cityscapes-1024-1024``
(converted from NVlabs' release), so their files load once the ``segformer.`` prefix is stripped (layout
``hf_segformer`` in ``models.checkpoints``).

The encoder has four stages. Each starts with an overlapping patch embedding (a strided convolution wider than
its stride, then LayerNorm) and stacks transformer blocks whose self-attention shrinks the keys and values by
a spatial-reduction ratio (a strided convolution + LayerNorm) and whose feed-forward part ("Mix-FFN") has a
3x3 depthwise convolution between its two linear layers instead of a position embedding, so any input size
works.
The decoder projects the four stage maps (1/4 .. 1/32) to one width, upsamples them to 1/4, concatenates them
(deepest first), fuses them with a 1x1 convolution + BatchNorm + ReLU and classifies at 1/4; the logits are
then resized to the input, as the registry's contract asks.

LayerNorm epsilons are NVlabs': 1e-6 in the blocks and after each stage, 1e-5 (PyTorch's default) in the patch
embeddings and the key/value reduction. Hugging Face's port uses 1e-5 everywhere; ``layer_norm_eps=1e-5``
reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import DropPath
from .recompute import checkpointed

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # SegformerImageProcessor's (after its 1/255 rescale), NVlabs' * 255
IMAGENET_STD = (0.229, 0.224, 0.225)

ENCODER_OPTIONS = {"widths", "depths", "heads", "sr_ratios", "mlp_ratios", "patch_sizes", "strides",
                   "drop_path_rate"}
_COMMON = dict(heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1), mlp_ratios=(4, 4, 4, 4), patch_sizes=(7, 3, 3, 3),
               strides=(4, 2, 2, 2), drop_path_rate=0.1)
# the released configurations (the Cityscapes checkpoints' SegformerConfig, NVlabs' mit_b0..b5 and heads);
# "tiny-test" keeps their structure (four stages, the same reductions and key names), not their size, and has
# no stochastic depth so that a test's gradients do not depend on which blocks a draw skips
SIZES = {
    "b0": dict(widths=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder_width=256),
    "b1": dict(widths=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder_width=256),
    "b2": dict(widths=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder_width=768),
    "b3": dict(widths=(64, 128, 320, 512), depths=(3, 4, 18, 3), decoder_width=768),
    "b4": dict(widths=(64, 128, 320, 512), depths=(3, 8, 27, 3), decoder_width=768),
    "b5": dict(widths=(64, 128, 320, 512), depths=(3, 6, 40, 3), decoder_width=768),
    "tiny-test": dict(widths=(8, 16, 24, 32), depths=(1, 1, 2, 1), heads=(1, 2, 3, 4), decoder_width=16,
                      drop_path_rate=0.0),
}


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, align_corners=False: the decoder's and the final upsampling of the original."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H*W, C) tokens -> (N, C, H, W) map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


class PatchEmbedding(nn.Module):
    """Overlapping patches: a convolution of kernel ``patch`` and a smaller ``stride`` (padding patch // 2),
    then LayerNorm over the channels. Returns tokens (N, H*W, C) and the map's (H, W)."""

    def __init__(self, c_in: int, c_out: int, patch: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(c_in, c_out, patch, stride=stride, padding=patch // 2)
        self.layer_norm = nn.LayerNorm(c_out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[2:]
        return self.layer_norm(x.flatten(2).transpose(1, 2)), height, width


class ReducedSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from the map shrunk ``sr_ratio`` times per side (a
    convolution of that kernel and stride, then LayerNorm): the cost falls by sr_ratio**2."""

    def __init__(self, width: int, heads: int, sr_ratio: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of {heads} heads")
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.sr = nn.Conv2d(width, width, sr_ratio, stride=sr_ratio) if sr_ratio > 1 else None
        self.layer_norm = nn.LayerNorm(width) if sr_ratio > 1 else None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, channels = x.shape
        return x.view(n, tokens, self.heads, channels // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        context = x
        if self.sr is not None:
            context = self.layer_norm(self.sr(_to_map(x, height, width)).flatten(2).transpose(1, 2))
        out = F.scaled_dot_product_attention(self._split(self.query(x)), self._split(self.key(context)),
                                             self._split(self.value(context)))  # softmax(q k^T / sqrt(d)) v
        return out.transpose(1, 2).reshape(x.shape)


class Attention(nn.Module):
    """The attention and its output projection, under the checkpoints' names ``self.*``, ``output.dense``."""

    def __init__(self, width: int, heads: int, sr_ratio: int):
        super().__init__()
        self.add_module("self", ReducedSelfAttention(width, heads, sr_ratio))  # "self": the checkpoints' name
        self.output = nn.ModuleDict({"dense": nn.Linear(width, width)})

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.output["dense"](getattr(self, "self")(x, height, width))


class TokenDepthwiseConv(nn.Module):
    """A 3x3 depthwise convolution applied to tokens laid back out as their map (Mix-FFN's position cue)."""

    def __init__(self, channels: int):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.dwconv(_to_map(x, height, width)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear (widen ``mlp_ratio`` times), 3x3 depthwise convolution, GELU, linear back."""

    def __init__(self, width: int, mlp_ratio: int):
        super().__init__()
        hidden = width * mlp_ratio
        self.dense1 = nn.Linear(width, hidden)
        self.dwconv = TokenDepthwiseConv(hidden)
        self.dense2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.dense2(F.gelu(self.dwconv(self.dense1(x), height, width)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + Mix-FFN(LN(x)), each branch with stochastic
    depth."""

    def __init__(self, width: int, heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float, eps: float):
        super().__init__()
        self.layer_norm_1 = nn.LayerNorm(width, eps=eps)
        self.attention = Attention(width, heads, sr_ratio)
        self.layer_norm_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MixFFN(width, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attention(self.layer_norm_1(x), height, width))
        return x + self.drop_path(self.mlp(self.layer_norm_2(x), height, width))


class MixTransformer(nn.Module):
    """The MiT encoder: four stages of patch embedding, blocks and a LayerNorm; returns the four maps (N, C_i,
    H / s_i, W / s_i) for s_i = 4, 8, 16, 32 (rounded up: any input size works)."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int], heads: Sequence[int],
                 sr_ratios: Sequence[int], mlp_ratios: Sequence[int], patch_sizes: Sequence[int],
                 strides: Sequence[int], drop_path_rate: float, eps: float):
        super().__init__()
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # rising linearly with depth
        self.patch_embeddings = nn.ModuleList(
            [PatchEmbedding(3 if i == 0 else widths[i - 1], widths[i], patch_sizes[i], strides[i])
             for i in range(len(widths))])
        self.block = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            self.block.append(nn.ModuleList(
                [Block(widths[i], heads[i], sr_ratios[i], mlp_ratios[i], rates[first + j], eps)
                 for j in range(depth)]))
        self.layer_norm = nn.ModuleList([nn.LayerNorm(w, eps=eps) for w in widths])

    def forward(self, x: torch.Tensor, recompute: bool = False) -> list[torch.Tensor]:
        maps = []
        for embed, blocks, norm in zip(self.patch_embeddings, self.block, self.layer_norm):
            tokens, height, width = embed(x)
            for block in blocks:
                if recompute:
                    tokens = checkpointed(block, tokens, height, width)
                else:
                    tokens = block(tokens, height, width)
            x = _to_map(norm(tokens), height, width).contiguous()
            maps.append(x)
        return maps


class StageProjection(nn.Module):
    """One stage map to the decoder's width: a linear layer over its channels (key ``proj``)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.proj = nn.Linear(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        return _to_map(self.proj(x.flatten(2).transpose(1, 2)), height, width)


class AllMLPDecoder(nn.Module):
    """Per-stage projection, bilinear upsampling to 1/4, concatenation (deepest stage first, as the released
    weights expect), 1x1 fuse convolution + BatchNorm + ReLU, dropout, 1x1 classifier: logits at 1/4."""

    def __init__(self, in_channels: Sequence[int], width: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.linear_c = nn.ModuleList([StageProjection(c, width) for c in in_channels])
        self.linear_fuse = nn.Conv2d(width * len(in_channels), width, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(width)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        size = maps[0].shape[2:]
        projected = [_resize(project(x), size) for project, x in zip(self.linear_c, maps)]
        fused = F.relu(self.batch_norm(self.linear_fuse(torch.cat(projected[::-1], dim=1))))
        return self.classifier(self.dropout(fused))


class SegFormer(nn.Module):
    """SegFormer. Input RGB (N, 3, H, W), uint8 or float in [0, 1]; output logits (N, num_classes, H, W)
    float32, upsampled bilinearly from the decoder's 1/4 (``decode`` gives those).

    ``size`` picks a released configuration ("b0" .. "b5") or "tiny-test"; ``overrides`` change any of its
    settings (``widths``, ``depths``, ``heads``, ``sr_ratios``, ``mlp_ratios``, ``patch_sizes``, ``strides``,
    ``decoder_width``, ``drop_path_rate``, ``dropout``, ``layer_norm_eps``).
    """

    recompute: bool = False  # rerun the encoder's blocks in the backward pass (set by the trainer: memory)

    def __init__(self, num_classes: int = 19, size: str = "b0", **overrides):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
        options = {**_COMMON, **SIZES[size], **overrides}
        decoder_width, dropout = options.pop("decoder_width"), options.pop("dropout", 0.1)
        eps = options.pop("layer_norm_eps", 1e-6)
        unknown = set(options) - ENCODER_OPTIONS
        if unknown:
            raise TypeError(f"unexpected SegFormer option(s) {', '.join(sorted(unknown))}")
        self.num_classes, self.size = num_classes, size
        self.encoder = MixTransformer(**options, eps=eps)
        self.decode_head = AllMLPDecoder(options["widths"], decoder_width, num_classes, dropout)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def decode(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the decoder's 1/4 resolution (what the original and Hugging Face's model return)."""
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        recompute = self.recompute and self.training and torch.is_grad_enabled()
        return self.decode_head(self.encoder((x - self.mean) / self.std, recompute))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _resize(self.decode(images), images.shape[2:]).float()


def segformer_b0(num_classes: int = 19, **options) -> SegFormer:
    """SegFormer-B0 as in ``nvidia/segformer-b0-finetuned-cityscapes-1024-1024`` (``size`` may still be
    overridden, e.g. "tiny-test")."""
    return SegFormer(num_classes, **{"size": "b0", **options})


def segformer_b1(num_classes: int = 19, **options) -> SegFormer:
    """SegFormer-B1 as in ``nvidia/segformer-b1-finetuned-cityscapes-1024-1024``."""
    return SegFormer(num_classes, **{"size": "b1", **options})


def segformer_b2(num_classes: int = 19, **options) -> SegFormer:
    """SegFormer-B2 as in ``nvidia/segformer-b2-finetuned-cityscapes-1024-1024``."""
    return SegFormer(num_classes, **{"size": "b2", **options})


def segformer_b3(num_classes: int = 19, **options) -> SegFormer:
    """SegFormer-B3 as in ``nvidia/segformer-b3-finetuned-cityscapes-1024-1024``."""
    return SegFormer(num_classes, **{"size": "b3", **options})


def segformer_b4(num_classes: int = 19, **options) -> SegFormer:
    """SegFormer-B4 as in ``nvidia/segformer-b4-finetuned-cityscapes-1024-1024``."""
    return SegFormer(num_classes, **{"size": "b4", **options})


def segformer_b5(num_classes: int = 19, **options) -> SegFormer:
    """SegFormer-B5 as in ``nvidia/segformer-b5-finetuned-cityscapes-1024-1024``."""
    return SegFormer(num_classes, **{"size": "b5", **options})
