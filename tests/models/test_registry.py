"""Every registered model: shape, gradients, finiteness; the study's U-Net: size, initialisation, layout."""

import pytest
import torch

from cityscapes_lab.engine.standard import has_aux_head
from cityscapes_lab.errors import ConfigError
from cityscapes_lab.models import build_model, list_models, model_spec
from cityscapes_lab.models.unet import UNetPaper


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_gradients_and_finiteness(name):
    """Every registered network, in its small test configuration (same structure and key names)."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, **model_spec(name).test_options)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    logits = model(images)
    assert logits.shape == (2, 7, 64, 96) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    if has_aux_head(model):  # an auxiliary head is trained through its own output
        main, aux = model(images, return_aux=True)
        assert aux.shape == main.shape
        logits = main + aux
        with torch.no_grad():  # the main output is the same with or without the auxiliary one (no dropout)
            assert torch.equal(model.eval()(images), model(images, return_aux=True)[0])
        model.train()
    logits.logsumexp(1).mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, f"{param_name} gets no gradient"


@pytest.mark.parametrize("alpha,trainable", [(1.0, 680_755), (1.25, 1_062_535), (1.5, 1_528_955), (1.75, 2_080_015),
                                             (2.0, 2_715_715)])
def test_paper_unet_has_the_studys_parameter_counts(alpha, trainable):
    model = build_model("unet_paper", num_classes=35, alpha=alpha)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    # Keras counts BatchNorm's moving statistics as parameters too: 682,259 at alpha 1
    if alpha == 1.0:
        assert trainable + sum(b.numel() for n, b in model.named_buffers() if "running" in n) == 682_259


def test_keras_initialisation_and_batchnorm_settings():
    model = UNetPaper(35)
    conv = model.encoder[0][0][0]
    std = (2 / conv.weight[0].numel()) ** 0.5 / 0.87962566103423978
    assert conv.weight.abs().max() <= 2 * std + 1e-6 and torch.all(conv.bias == 0)
    assert abs(conv.weight.std().item() - (2 / conv.weight[0].numel()) ** 0.5) < 0.25 * std
    bn = model.stem[1]
    assert bn.eps == 1e-3 and bn.momentum == 0.01


def test_input_is_scaled_inside_and_uint8_equals_float():
    model = UNetPaper(5).eval()
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(model(images), model(images.float()), atol=1e-5)


def test_unknown_model_and_option_are_refused():
    with pytest.raises(ConfigError, match="registered models: .*unet_paper"):
        build_model("resnet9000", num_classes=19)
    with pytest.raises(ConfigError, match="no option depth"):
        build_model("unet_paper", num_classes=19, depth=3)


def test_recompute_gives_the_same_result_and_batchnorm_statistics():
    """Checkpointed stages: identical loss, gradients and running statistics, with or without recomputation."""
    images = torch.randint(0, 256, (3, 3, 32, 48), dtype=torch.uint8)
    target = torch.randint(0, 5, (3, 32, 48))
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = UNetPaper(5)
        model.recompute = recompute
        loss = torch.nn.functional.cross_entropy(model(images), target)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()],
                        [b.clone() for b in model.buffers()]))
    (loss_a, grads_a, buffers_a), (loss_b, grads_b, buffers_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_a, grads_b))
    assert all(torch.equal(a, b) for a, b in zip(buffers_a, buffers_b))
