"""Every registered model: shape, gradients, finiteness; the study's U-Net: size, initialisation, layout."""

import pytest
import torch
from cuda_precision import full_fp32_on_cuda

from cityscapes_lab.engine.steps import has_aux_head
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


def test_input_is_scaled_inside_and_uint8_equals_float_in_0_1():
    """uint8 is divided by 255 inside, as the study does; float input is already in [0, 1] (the contract)."""
    model = UNetPaper(5).eval()
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(model(images), model(images.float() * (1.0 / 255.0)))


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


@pytest.mark.parametrize("name", list_models())
def test_the_input_contract_uint8_or_float_in_0_1_give_the_same_logits(name):
    """Every registry model takes RGB (N, 3, H, W) as uint8 or as float in [0, 1] and normalises itself."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, **model_spec(name).test_options).eval()
    images = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        as_uint8, as_float = model(images), model(images.float() / 255)
    torch.testing.assert_close(as_float, as_uint8, atol=1e-4, rtol=1e-4)


def test_predict_gives_the_classes_of_a_direct_forward(tmp_path):
    """`predict` (and `zoo eval`) feed a model through the same contract as the study: same classes. The
    biases and batch-norm statistics are random: with the zeros of a fresh model the U-Net is scale-invariant
    and a wrong input scale would go unnoticed."""
    import numpy as np

    from cityscapes_lab.models.checkpoints import save_checkpoint
    from cityscapes_lab.engine.prediction import label_ids_of, load_predictor

    torch.manual_seed(0)
    model = build_model("unet_paper", 35, alpha=0.5).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 1.5)
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0, 0.2)
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model_name": "unet_paper", "model_options": {"alpha": 0.5}, "num_classes": 35,
                           "protocol": "paper", "input_size": [112, 64], "state_dict": model.state_dict()})
    image = np.random.default_rng(0).integers(0, 256, (64, 112, 3), np.uint8)
    with torch.no_grad():
        direct = model(torch.from_numpy(image).permute(2, 0, 1)[None]).argmax(1)[0].numpy().astype(np.uint8)
    assert len(np.unique(direct)) > 1
    assert np.array_equal(load_predictor(None, path, device="cpu")(image), label_ids_of(direct, 35))


@pytest.mark.parametrize("name", list_models())
def test_every_path_into_a_model_gives_the_classes_of_a_direct_forward(name, raw_small, tmp_path):
    """The model contract, for every registry model (reduced widths, random biases and batch-norm statistics so
    that a wrong input scale shows): a direct forward, the study's scoring (`engine.inference.predict` on uint8
    arrays), `predict` (`load_predictor`) and `zoo eval` (`evaluate_on_raw`) see the same classes."""
    import numpy as np

    from cityscapes_lab.data.raw import open_raw
    from cityscapes_lab.engine.inference import predict
    from cityscapes_lab.engine.prediction import label_ids_of, load_predictor
    from cityscapes_lab.engine.runtime import Runtime
    from cityscapes_lab.engine.zoo_eval import evaluate_on_raw
    from cityscapes_lab.metrics.official import ConfusionMatrix, official_scores
    from cityscapes_lab.models.checkpoints import save_checkpoint

    torch.manual_seed(0)
    options = model_spec(name).test_options
    model = build_model(name, 19, **options).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 1.5)
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias.normal_(0, 0.02)
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model_name": name, "model_options": options, "num_classes": 19, "protocol": "standard",
                           "input_size": [512, 256] if name == "unet_paper" else None,
                           "state_dict": model.state_dict()})
    index = open_raw(raw_small)
    frame = sorted(f for f in index.files if f.startswith("leftImg8bit/val/"))[0]
    image = index.decode(frame)[..., :3]
    with torch.no_grad():
        direct = model(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255).argmax(1)[0].numpy()
    direct = direct.astype(np.uint8)
    assert len(np.unique(direct)) > 1
    studied = predict(model, image[None], Runtime.cpu(channels_last=False, eval_batch_size=1))[0]
    assert np.mean(studied == direct) > 0.999  # uint8 in, normalised inside: the same up to rounding
    predictor = load_predictor(None, path, device="cpu")
    assert np.array_equal(predictor(image), label_ids_of(direct, 19))
    truth = index.decode(frame.replace("leftImg8bit/", "gtFine/").replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
    confusion = ConfusionMatrix()
    confusion.add(label_ids_of(direct, 19), truth)
    scored = evaluate_on_raw(predictor, raw_small, "val", limit=1, show_progress=False)
    assert scored.scores.miou == official_scores(confusion).miou


@pytest.mark.gpu
@pytest.mark.parametrize("name", list_models())
def test_cuda_gives_the_cpu_logits(name):
    """The same weights in eval mode give the same logits on the GPU as on the CPU (fp32, channels-last there)."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, **model_spec(name).test_options).eval()
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad(), full_fp32_on_cuda():
        expected = model(images)
        model.cuda().to(memory_format=torch.channels_last)
        logits = model(images.cuda().contiguous(memory_format=torch.channels_last)).cpu()
    torch.testing.assert_close(logits, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("name", list_models())
def test_cuda_bf16_channels_last_training_step(name):
    """A training step as the engine takes it on a GPU (bf16 autocast, channels-last): finite fp32 logits out of
    the model, finite gradients on every parameter, and bf16 logits within rounding of the fp32 ones."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, **model_spec(name).test_options).cuda()
    model.to(memory_format=torch.channels_last).train()
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8).cuda()
    images = images.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 7, (2, 64, 96)).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = model(images, return_aux=True) if has_aux_head(model) else (model(images),)
    for logits in outputs:
        assert logits.shape == (2, 7, 64, 96) and torch.isfinite(logits).all()
    sum(torch.nn.functional.cross_entropy(logits.float(), target) for logits in outputs).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    model.eval()
    with torch.no_grad():
        fp32 = model(images)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(images).float()
    # bf16 keeps 8 significant bits: a few per cent of the logits' spread after a deep net; garbage is far off
    assert (bf16 - fp32).abs().mean() < 0.1 * fp32.std()
