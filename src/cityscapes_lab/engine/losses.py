"""Pixel-wise softmax cross-entropy that is cheap on memory at full resolution.

``F.cross_entropy`` on a channels-last (N, C, H, W) tensor reduces over a strided dimension and keeps a
full-size log-softmax for the backward pass; at batch 32 and 416x208x35 that tensor alone is 388 MB, and the
loss took a quarter of a CPU training step. Here logits are read as (pixels, C) rows (contiguous for
channels-last), in blocks that fit the cache: the forward pass takes a row-wise log-softmax of each block into
one reused buffer and keeps only the picked values; the backward pass writes ``scale * (softmax - onehot)`` block
by block straight into the gradient (a row-wise softmax kernel, then a scale and a scatter while the block is in
the cache). The result equals ``F.cross_entropy(logits, target, ignore_index=...)`` (mean over counted pixels).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

_BLOCK = 16384  # rows per block: 16384 x 35 floats = 2.3 MB
_log_softmax_out = torch.ops.aten._log_softmax.out  # row-wise kernels that write into a given tensor
_softmax_out = torch.ops.aten._softmax.out


def _rows(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, C) without a copy when the tensor is channels-last."""
    rows = logits.permute(0, 2, 3, 1)
    return rows.reshape(-1, logits.shape[1])


class _PixelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
        rows = _rows(logits.float() if logits.dtype != torch.float32 else logits)
        labels = target.reshape(-1)
        valid = labels != ignore_index
        safe = torch.where(valid, labels, 0)[:, None]
        picked = torch.empty((rows.shape[0], 1), dtype=torch.float32, device=rows.device)
        buffer = torch.empty((min(_BLOCK, rows.shape[0]), rows.shape[1]), dtype=torch.float32, device=rows.device)
        for start in range(0, rows.shape[0], _BLOCK):
            block = rows[start:start + _BLOCK]
            log_probs = buffer[:block.shape[0]]
            _log_softmax_out(block, 1, False, out=log_probs)
            torch.gather(log_probs, 1, safe[start:start + _BLOCK], out=picked[start:start + _BLOCK])
        count = valid.sum().clamp_min(1)
        loss = -torch.where(valid, picked[:, 0], 0.0).sum() / count
        ctx.save_for_backward(logits, safe, valid, count)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        logits, safe, valid, count = ctx.saved_tensors
        rows = _rows(logits)
        # d loss / d z = scale * (softmax(z) - onehot) on counted pixels, zero on the others
        weight = torch.where(valid, grad_loss / count, 0.0).to(logits.dtype)[:, None]
        negative = -weight
        grad = torch.empty((rows.shape[0], rows.shape[1]), dtype=logits.dtype, device=rows.device)
        for start in range(0, rows.shape[0], _BLOCK):
            block = grad[start:start + _BLOCK]
            _softmax_out(rows[start:start + _BLOCK], 1, False, out=block)
            block.mul_(weight[start:start + _BLOCK])
            block.scatter_add_(1, safe[start:start + _BLOCK], negative[start:start + _BLOCK])
        n, c, h, w = logits.shape
        return grad.view(n, h, w, c).permute(0, 3, 1, 2), None, None


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None
                        ) -> torch.Tensor:
    """Mean softmax cross-entropy over pixels. logits (N, C, H, W) float, target (N, H, W) int64; pixels equal
    to ``ignore_index`` are not counted. Equals ``F.cross_entropy``; uses the blocked kernel on CPU."""
    if logits.device.type != "cpu" or torch.compiler.is_compiling():
        return F.cross_entropy(logits.float(), target, ignore_index=-100 if ignore_index is None else ignore_index)
    return _PixelCrossEntropy.apply(logits, target, -100 if ignore_index is None else ignore_index)


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None, threshold: float,
                       min_kept: int) -> torch.Tensor:
    """Cross-entropy over the hard pixels only (online hard example mining, as the semi-supervised benchmark's
    recipe uses it): the counted pixels whose predicted probability of their label is at most ``threshold``;
    when fewer than ``min_kept`` are, the threshold rises to the ``min_kept``-th smallest probability (so the
    ``min_kept`` hardest are kept); when the batch has no more than ``min_kept`` counted pixels, all of them.
    The mean over the kept pixels."""
    per_pixel = F.cross_entropy(logits.float(), target, reduction="none",
                                ignore_index=-100 if ignore_index is None else ignore_index)
    valid = target != (-100 if ignore_index is None else ignore_index)
    with torch.no_grad():
        probability = torch.where(valid, torch.exp(-per_pixel), 1.0)  # of the label: exp(-cross-entropy)
        counted = int(valid.sum())
        if counted <= min_kept:
            kept = valid
        else:
            limit = threshold
            if min_kept > 0:
                kth = torch.kthvalue(probability.flatten(), min_kept).values
                limit = max(threshold, float(kth))
            kept = valid & (probability <= limit)
    return (per_pixel * kept).sum() / kept.sum().clamp_min(1)
