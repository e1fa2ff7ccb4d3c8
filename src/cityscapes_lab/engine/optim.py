"""The study's optimizer: AdamW with TensorFlow Addons' decoupled weight decay (notes 2.3)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class DecoupledAdamW(torch.optim.AdamW):
    """AdamW whose weight decay is ``p <- p - decay * p`` every step, whatever the learning rate (TFA's rule).

    PyTorch's AdamW decays by ``lr * weight_decay``; before each step this sets its ``weight_decay`` to
    ``decay / lr`` for every group, so the decay stays exact if the learning rate changes. Every parameter is
    decayed, biases and BatchNorm included, as in the study.
    """

    def __init__(self, params: Iterable, lr: float, decay: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-7):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=decay / lr)
        for group in self.param_groups:
            group["decoupled_decay"] = decay

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            group["weight_decay"] = group["decoupled_decay"] / group["lr"]
        return super().step(closure)
