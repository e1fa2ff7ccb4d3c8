"""HRNet-W48 + OCR: the published checkpoint's layout and size, the zoo's forward contract, align_corners."""

import pytest
import torch
from torch.nn import functional as F

from cityscapes_lab.models.hrnet_ocr import HRNetOCR, SpatialGather, hrnet_w48_ocr

SMALL = {"width": 4, "stem_channels": 8, "ocr_mid_channels": 16, "ocr_key_channels": 8}

# names and shapes as in hrnet_ocr_cs_8162_torch11.pth (after stripping "model."), read off the official
# lib/models/seg_hrnet_ocr.py and the W48 config
PUBLISHED_KEYS = {
    "conv1.weight": (64, 3, 3, 3),
    "bn1.weight": (64,),
    "bn2.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.3.bn3.running_var": (256,),
    "transition1.0.0.weight": (48, 256, 3, 3),
    "transition1.1.0.0.weight": (96, 256, 3, 3),
    "transition2.2.0.0.weight": (192, 96, 3, 3),
    "transition3.3.0.1.running_mean": (384,),
    "stage2.0.branches.0.0.conv1.weight": (48, 48, 3, 3),
    "stage2.0.fuse_layers.0.1.0.weight": (48, 96, 1, 1),
    "stage2.0.fuse_layers.1.0.0.0.weight": (96, 48, 3, 3),
    "stage3.3.branches.2.3.bn2.bias": (192,),
    "stage4.2.fuse_layers.3.0.0.0.weight": (48, 48, 3, 3),
    "stage4.2.fuse_layers.3.0.2.0.weight": (384, 48, 3, 3),
    "stage4.2.fuse_layers.0.3.1.weight": (48,),
    "conv3x3_ocr.0.weight": (512, 720, 3, 3),
    "conv3x3_ocr.0.bias": (512,),
    "conv3x3_ocr.1.running_var": (512,),
    "aux_head.0.weight": (720, 720, 1, 1),
    "aux_head.0.bias": (720,),
    "aux_head.1.weight": (720,),
    "aux_head.3.weight": (19, 720, 1, 1),
    "aux_head.3.bias": (19,),
    "ocr_distri_head.object_context_block.f_pixel.0.weight": (256, 512, 1, 1),
    "ocr_distri_head.object_context_block.f_pixel.1.0.weight": (256,),
    "ocr_distri_head.object_context_block.f_pixel.2.weight": (256, 256, 1, 1),
    "ocr_distri_head.object_context_block.f_object.3.0.running_mean": (256,),
    "ocr_distri_head.object_context_block.f_down.0.weight": (256, 512, 1, 1),
    "ocr_distri_head.object_context_block.f_up.0.weight": (512, 256, 1, 1),
    "ocr_distri_head.object_context_block.f_up.1.0.bias": (512,),
    "ocr_distri_head.conv_bn_dropout.0.weight": (512, 1024, 1, 1),
    "ocr_distri_head.conv_bn_dropout.1.0.num_batches_tracked": (),
    "cls_head.weight": (19, 512, 1, 1),
    "cls_head.bias": (19,),
}
# keys the official model does NOT have: branches that keep their width get no transition, a branch has no
# fuse layer to itself, the OCR convs inside the attention block have no bias
ABSENT_KEYS = ["transition2.0.0.weight", "transition2.1.0.weight", "stage2.0.fuse_layers.0.0.0.weight",
               "ocr_distri_head.object_context_block.f_pixel.0.bias",
               "ocr_distri_head.conv_bn_dropout.0.bias"]


@pytest.fixture(scope="module")
def full_state():
    model = hrnet_w48_ocr()
    return model.state_dict(), sum(p.numel() for p in model.parameters())


def test_published_size_and_entry_count(full_state):
    state, params = full_state
    assert params == 70_372_678 and abs(params / 1e6 - 70.37) < 0.005
    assert len(state) == 1890
    head = [k for k in state if k.startswith(("conv3x3_ocr.", "ocr_", "aux_head.", "cls_head."))]
    assert len(head) == 60  # so the HRNetV2-W48 backbone has its 1830 entries


def test_published_key_names_and_shapes(full_state):
    state, _ = full_state
    for name, shape in PUBLISHED_KEYS.items():
        assert name in state, name
        assert tuple(state[name].shape) == shape, name
    for name in ABSENT_KEYS:
        assert name not in state, name
    # the normalisation constants are not part of the checkpoint
    assert not any(k in state for k in ("mean", "std"))


def _small(num_classes: int = 5) -> HRNetOCR:
    torch.manual_seed(0)
    return HRNetOCR(num_classes=num_classes, **SMALL)


def test_uint8_and_float_inputs_agree_and_shapes():
    model = _small().eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        from_uint8 = model(images)
        from_float = model(images.float() / 255.0)
        main, aux = model(images, return_aux=True)
    assert from_uint8.shape == (2, 5, 64, 96) and from_uint8.dtype == torch.float32
    assert torch.isfinite(from_uint8).all()
    assert torch.equal(from_uint8, from_float)
    assert torch.equal(main, from_uint8)
    assert aux.shape == main.shape and aux.dtype == torch.float32 and torch.isfinite(aux).all()


def test_every_parameter_gets_a_gradient_from_both_outputs():
    model = _small().train()
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    main, aux = model(images, return_aux=True)
    assert main.shape == aux.shape == (2, 5, 64, 96)
    target = torch.randint(0, 5, (2, 64, 96), generator=torch.Generator().manual_seed(3))
    (F.cross_entropy(main, target) + 0.4 * F.cross_entropy(aux, target)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_every_resize_is_bilinear_with_align_corners(monkeypatch):
    calls = []
    interpolate = F.interpolate

    def recording(x, *args, **kwargs):
        calls.append((kwargs.get("mode"), kwargs.get("align_corners")))
        return interpolate(x, *args, **kwargs)

    monkeypatch.setattr(F, "interpolate", recording)
    with torch.no_grad():
        _small().eval()(torch.rand(1, 3, 64, 96), return_aux=True)
    # fusions: 1 (stage 2) + 4 x 3 (stage 3) + 3 x 6 (stage 4); 3 to concatenate at 1/4; 2 to the input size
    assert len(calls) == 31 + 3 + 2
    assert set(calls) == {("bilinear", True)}


def test_final_upsampling_maps_corners_to_corners():
    model = _small().eval()
    captured = {}
    model.cls_head.register_forward_hook(lambda module, inputs, output: captured.update(main=output))
    model.aux_head.register_forward_hook(lambda module, inputs, output: captured.update(aux=output))
    with torch.no_grad():
        main, aux = model(torch.rand(1, 3, 64, 96), return_aux=True)
    for name, full in (("main", main), ("aux", aux)):
        low = captured[name]
        assert low.shape[-2:] == (16, 24)  # predicted at 1/4 resolution
        assert torch.equal(full, F.interpolate(low, size=(64, 96), mode="bilinear", align_corners=True))
        misaligned = F.interpolate(low, size=(64, 96), mode="bilinear", align_corners=False)
        assert not torch.allclose(full, misaligned)
    # a linear ramp stays exactly linear end to end only with align_corners=True
    ramp = torch.linspace(0, 1, 24).expand(1, 1, 16, 24)
    model.cls_head.register_forward_hook(lambda module, inputs, output: ramp.expand_as(output).contiguous())
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    torch.testing.assert_close(out[0, 0, 0], torch.linspace(0, 1, 96))


def test_region_descriptors_weight_pixels_by_a_softmax_over_pixels():
    # constant features: a per-class softmax over pixels sums to one, so every descriptor equals the constant
    feats = torch.full((2, 6, 4, 5), 3.0)
    logits = torch.randn(2, 7, 4, 5, generator=torch.Generator().manual_seed(4))
    regions = SpatialGather()(feats, logits)
    assert regions.shape == (2, 6, 7, 1)
    torch.testing.assert_close(regions, torch.full_like(regions, 3.0))
