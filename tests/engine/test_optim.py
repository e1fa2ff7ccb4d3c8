"""The study's decay rule: p <- p - wd * p per step, not scaled by the learning rate."""

import pytest
import torch

from cityscapes_lab.engine.optim import DecoupledAdamW


def decayed_after(lr: float, steps: int, decay: float = 1e-4) -> torch.Tensor:
    param = torch.nn.Parameter(torch.full((3,), 2.0))
    optimizer = DecoupledAdamW([param], lr=lr, decay=decay)
    for _ in range(steps):
        param.grad = torch.zeros_like(param)  # no gradient: only the decay moves the parameter
        optimizer.step()
    return param.detach()


def test_decay_is_per_step_and_independent_of_the_learning_rate():
    expected = 2.0 * (1 - 1e-4) ** 5
    for lr in (0.003, 0.1, 1e-6):
        assert torch.allclose(decayed_after(lr, 5), torch.full((3,), expected), rtol=0, atol=2e-6)


def test_decay_stays_exact_when_the_learning_rate_changes():
    param = torch.nn.Parameter(torch.full((2,), 1.0))
    optimizer = DecoupledAdamW([param], lr=0.003, decay=0.01)
    for lr in (0.003, 0.5, 0.0001):
        optimizer.param_groups[0]["lr"] = lr
        param.grad = torch.zeros_like(param)
        optimizer.step()
    assert torch.allclose(param.detach(), torch.full((2,), 0.99 ** 3), atol=2e-6)


def test_update_matches_adam_plus_decay():
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(4))
    reference = param.detach().clone()
    optimizer = DecoupledAdamW([param], lr=0.003, decay=1e-4, eps=1e-7)
    m = v = torch.zeros(4)
    for step in range(1, 4):
        grad = torch.randn(4)
        param.grad = grad.clone()
        optimizer.step()
        reference = reference * (1 - 1e-4)  # decay first, as TFA and torch do
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad**2
        m_hat, v_hat = m / (1 - 0.9**step), v / (1 - 0.999**step)
        reference = reference - 0.003 * m_hat / (v_hat.sqrt() + 1e-7)
    assert torch.allclose(param.detach(), reference, atol=1e-6)


def test_keras_epsilon_on_a_hand_computed_step():
    """Keras/TensorFlow: lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t); p <- p - lr_t * m / (sqrt(v) + eps). With a
    gradient of 1e-5 the epsilon rule decides the size of the first update."""
    import math

    lr, eps, g = 0.003, 1e-7, 1e-5
    updates = {}
    for keras in (True, False):
        param = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        optimizer = DecoupledAdamW([param], lr=lr, decay=0.0, eps=eps, keras_epsilon=keras)
        for _ in range(2):
            param.grad = torch.tensor([g], dtype=torch.float64)
            optimizer.step()
        updates[keras] = 1.0 - float(param.detach())
    expected = 0.0
    m = v = 0.0
    for t in (1, 2):
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        expected += lr * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (math.sqrt(v) + eps)
    assert updates[True] == pytest.approx(expected, rel=1e-9)
    assert updates[False] == pytest.approx(2 * lr * 1e-5 / (1e-5 + eps), rel=1e-6)  # PyTorch's form
    assert updates[True] < 0.8 * updates[False]


def test_keras_epsilon_continues_after_a_resume():
    torch.manual_seed(0)
    grads = [torch.randn(3) * 1e-5 for _ in range(4)]

    def run(resume_after: int | None) -> torch.Tensor:
        param = torch.nn.Parameter(torch.ones(3))
        optimizer = DecoupledAdamW([param], lr=0.003, decay=1e-4, keras_epsilon=True)
        for k, grad in enumerate(grads):
            if k == resume_after:
                state = optimizer.state_dict()
                optimizer = DecoupledAdamW([param], lr=0.003, decay=1e-4, keras_epsilon=True)
                optimizer.load_state_dict(state)
            param.grad = grad.clone()
            optimizer.step()
        return param.detach()

    assert torch.equal(run(None), run(2))
