"""The study's optimizer: AdamW with TensorFlow Addons' decoupled weight decay (notes 2.3)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class DecoupledAdamW(torch.optim.AdamW):
    """AdamW whose weight decay is ``p <- p - decay * p`` every step, whatever the learning rate (TFA's rule).

    PyTorch's AdamW decays by ``lr * weight_decay``; before each step this sets its ``weight_decay`` to
    ``decay / lr`` for every group, so the decay stays exact if the learning rate changes. Every parameter is
    decayed, biases and BatchNorm included, as in the study.

    ``keras_epsilon`` (the study's protocol) applies epsilon as Keras/TensorFlow do: ``lr_t * m / (sqrt(v) +
    eps)`` with ``lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)``, which equals PyTorch's bias-corrected form with
    ``eps / sqrt(1 - b2^t)`` (3.2e-6 instead of 1e-7 at step 1, fading to eps over a few thousand steps). The
    step count comes from the optimizer state, so a resumed training continues the same schedule.

    ``decay_scaled_by_lr`` switches to PyTorch's own rule, ``p <- p - lr * decay * p`` (the decay then follows a
    learning-rate schedule).
    """

    def __init__(self, params: Iterable, lr: float, decay: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-7, keras_epsilon: bool = False, decay_scaled_by_lr: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=decay / lr)
        for group in self.param_groups:
            group["decoupled_decay"] = decay
            group["decay_scaled_by_lr"] = decay_scaled_by_lr
            group["base_eps"] = eps
            group["keras_epsilon"] = keras_epsilon

    def _next_step(self, group: dict) -> int:
        for param in group["params"]:
            state = self.state.get(param)
            if state and "step" in state:
                return int(state["step"]) + 1
        return 1

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            scaled = group.get("decay_scaled_by_lr")  # PyTorch's rule: p <- p - lr * decay * p
            group["weight_decay"] = group["decoupled_decay"] if scaled else group["decoupled_decay"] / group["lr"]
            if group.get("keras_epsilon"):
                beta2 = group["betas"][1]
                group["eps"] = group["base_eps"] / math.sqrt(1.0 - beta2 ** self._next_step(group))
        return super().step(closure)
