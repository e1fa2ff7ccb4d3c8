"""The blocked cross-entropy equals PyTorch's, in value and gradient, with and without ignored pixels."""

import pytest
import torch
from torch.nn import functional as F

from cityscapes_lab.engine import losses
from cityscapes_lab.engine.losses import pixel_cross_entropy


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("ignore_index", [None, 255])
def test_matches_torch(channels_last, ignore_index, monkeypatch):
    monkeypatch.setattr(losses, "_BLOCK", 100)  # several blocks, one of them short
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11, 13)
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 6, (3, 11, 13))
    if ignore_index is not None:
        target[:, :3] = ignore_index
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    a = pixel_cross_entropy(ours, target, ignore_index)
    b = F.cross_entropy(theirs, target, ignore_index=-100 if ignore_index is None else ignore_index)
    (2 * a).backward()
    (2 * b).backward()
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-7)
    assert ours.grad.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_all_pixels_ignored_gives_zero_loss_and_gradient():
    logits = torch.randn(1, 4, 2, 2, requires_grad=True)
    loss = pixel_cross_entropy(logits, torch.full((1, 2, 2), 255), 255)
    loss.backward()
    assert loss.item() == 0 and torch.all(logits.grad == 0)
