"""UperNet + InternImage: the released L and XL layouts (keys, shapes, parameter counts) and the forward
contract on the tiny test configuration."""

from __future__ import annotations

import re

import pytest
import torch

from cityscapes_lab.models.upernet import UperNetInternImage, upernet_internimage_l, upernet_internimage_xl

# OpenGVLab/InternImage's README reports 256 M (L) and 368 M (XL) for the whole UperNet with its aux head
PARAMETERS = {("l", 150): 255_600_606, ("l", 19): 255_499_736,
              ("xl", 150): 367_733_000, ("xl", 19): 367_632_130}
STATE_ENTRIES = {"l": 913, "xl": 957}


def _meta(size: str, num_classes: int = 150) -> UperNetInternImage:
    with torch.device("meta"):  # structure only: no memory, no initialisation cost
        return UperNetInternImage(num_classes, size)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _published_keys(c: int, last_block: int, classes: int = 150) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the released checkpoints, for backbone width ``c`` (160 for L, 192 for XL)."""
    g3 = c // 16 * 8  # the groups of the last stage: 80 (L) or 96 (XL), 16 channels each
    return {
        "backbone.patch_embed.conv1.weight": (c // 2, 3, 3, 3),
        "backbone.patch_embed.norm1.1.weight": (c // 2,),
        "backbone.patch_embed.conv2.bias": (c,),
        "backbone.patch_embed.norm2.1.bias": (c,),
        "backbone.levels.0.blocks.0.norm1.0.weight": (c,),
        "backbone.levels.0.blocks.0.dcn.dw_conv.0.weight": (c, 1, 3, 3),
        "backbone.levels.0.blocks.0.dcn.dw_conv.1.1.weight": (c,),
        "backbone.levels.0.blocks.0.dcn.offset.weight": (c // 16 * 18, c),
        "backbone.levels.0.blocks.0.dcn.mask.bias": (c // 16 * 9,),
        "backbone.levels.0.blocks.4.dcn.input_proj.weight": (c, c),
        "backbone.levels.1.blocks.2.dcn.output_proj.bias": (2 * c,),
        "backbone.levels.0.blocks.0.norm2.0.bias": (c,),
        "backbone.levels.0.blocks.0.mlp.fc1.weight": (4 * c, c),
        "backbone.levels.0.blocks.0.mlp.fc2.weight": (c, 4 * c),
        "backbone.levels.0.blocks.0.gamma1": (c,),
        "backbone.levels.0.blocks.0.gamma2": (c,),
        "backbone.levels.0.downsample.conv.weight": (2 * c, c, 3, 3),
        "backbone.levels.0.downsample.norm.1.weight": (2 * c,),
        "backbone.levels.2.downsample.norm.1.bias": (8 * c,),
        f"backbone.levels.2.blocks.{last_block}.mlp.fc2.bias": (4 * c,),
        "backbone.levels.3.blocks.4.dcn.offset.weight": (g3 * 18, 8 * c),
        "backbone.levels.3.blocks.4.dcn.mask.weight": (g3 * 9, 8 * c),
        "decode_head.conv_seg.weight": (classes, 512, 1, 1),
        "decode_head.conv_seg.bias": (classes,),
        "decode_head.psp_modules.0.1.conv.weight": (512, 8 * c, 1, 1),
        "decode_head.psp_modules.3.1.bn.running_var": (512,),
        "decode_head.bottleneck.conv.weight": (512, 8 * c + 4 * 512, 3, 3),
        "decode_head.lateral_convs.0.conv.weight": (512, c, 1, 1),
        "decode_head.lateral_convs.2.bn.weight": (512,),
        "decode_head.fpn_convs.2.conv.weight": (512, 512, 3, 3),
        "decode_head.fpn_bottleneck.conv.weight": (512, 4 * 512, 3, 3),
        "decode_head.fpn_bottleneck.bn.num_batches_tracked": (),
        "auxiliary_head.convs.0.conv.weight": (256, 4 * c, 3, 3),
        "auxiliary_head.convs.0.bn.running_mean": (256,),
        "auxiliary_head.conv_seg.weight": (classes, 256, 1, 1),
        "auxiliary_head.conv_seg.bias": (classes,),
    }


@pytest.mark.parametrize("size, num_classes", list(PARAMETERS))
def test_parameter_counts(size, num_classes):
    model = _meta(size, num_classes)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[size, num_classes]


@pytest.mark.parametrize("size, width, last_block", [("l", 160, 21), ("xl", 192, 23)])
def test_published_keys_and_shapes(size, width, last_block):
    shapes = _shapes(_meta(size))
    assert len(shapes) == STATE_ENTRIES[size]
    expected = _published_keys(width, last_block)
    assert {key: shapes.get(key) for key in expected} == expected
    assert f"backbone.levels.2.blocks.{last_block + 1}.gamma1" not in shapes  # depths 22 / 24
    assert all(key.split(".")[0] in ("backbone", "decode_head", "auxiliary_head") for key in shapes)
    # post-norm blocks: no closing stage norm, no H/G-only extras, no bias on the head's conv before BN
    assert not [key for key in shapes if re.search(r"levels\.\d\.norm\.|post_norm|center_feature", key)]
    assert not [key for key in shapes if key.endswith("conv.bias") and "head" in key]


def test_builders_and_overrides():
    with torch.device("meta"):
        assert _shapes(upernet_internimage_l()) == _shapes(UperNetInternImage(19, "l"))
        assert _shapes(upernet_internimage_xl(150)) == _shapes(UperNetInternImage(150, "xl"))
        pre_norm = UperNetInternImage(5, "tiny-test", post_norm=False, layer_scale=None)
        tiny = UperNetInternImage(5, "tiny-test")
        assert _shapes(upernet_internimage_l(5, size="tiny-test")) == _shapes(tiny)
    keys = set(pre_norm.state_dict())
    assert "backbone.levels.3.norm.0.weight" in keys and "backbone.levels.0.blocks.0.gamma1" not in keys
    with pytest.raises(TypeError):
        UperNetInternImage(5, "tiny-test", no_such_option=1)
    with pytest.raises(ValueError):
        UperNetInternImage(5, "huge")


def test_tiny_configuration_has_the_released_layout():
    def pattern(key: str) -> str:  # forget how many blocks, heads and pooling branches there are
        return re.sub(r"\.(blocks|lateral_convs|fpn_convs|psp_modules|levels)\.\d+", r".\1.*", key)

    tiny = UperNetInternImage(150, "tiny-test")
    assert {pattern(k) for k in tiny.state_dict()} == {pattern(k) for k in _meta("l").state_dict()}


def _images(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=generator)


def test_tiny_forward_contract():
    torch.manual_seed(0)
    model = UperNetInternImage(7, "tiny-test").eval()
    images = _images()
    with torch.no_grad():
        logits = model(images)
        assert torch.equal(model(images.float() / 255), logits)  # uint8 and the same image as float in [0, 1]
        main, aux = model(images, return_aux=True)
    assert logits.shape == (2, 7, 64, 96) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert torch.equal(main, logits)
    assert aux.shape == (2, 7, 64, 96) and aux.dtype == torch.float32 and torch.isfinite(aux).all()


def test_tiny_backbone_stages():
    model = UperNetInternImage(7, "tiny-test")
    features = model.backbone(torch.randn(1, 3, 64, 96))
    shapes = [tuple(f.shape) for f in features]
    assert shapes == [(1, 16, 16, 24), (1, 32, 8, 12), (1, 64, 4, 6), (1, 128, 2, 3)]


def _train_step(model: UperNetInternImage) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    main, aux = model(_images(1), return_aux=True)
    (main.square().mean() + 0.4 * aux.square().mean()).backward()
    return main, {name: p.grad for name, p in model.named_parameters()}


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = UperNetInternImage(7, "tiny-test", dropout_ratio=0.0).train()
    _, grads = _train_step(model)
    for name, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, f"{name} gets no gradient"


def test_recompute_gives_the_same_training_step():
    torch.manual_seed(0)
    model = UperNetInternImage(7, "tiny-test", dropout_ratio=0.0).train()
    plain, plain_grads = _train_step(model)
    model.recompute = True
    assert model.backbone.recompute
    again, again_grads = _train_step(model)
    torch.testing.assert_close(again, plain)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(again_grads[name], grad, msg=name)
