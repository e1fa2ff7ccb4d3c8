"""DeepLabV3+ (UniMatch's network): the published files load into it key by key (UniMatch's deep-stem ImageNet
backbones, torchvision's plain-stem ResNets, UniMatch's DDP Cityscapes checkpoints), strictly; its structure is
UniMatch's (output stride 16, where layer4 is dilated, ASPP rates, parameter counts of the full-size networks).

The files are written here from random weights, with the key names enumerated independently of our modules from
UniMatch's model/backbone/resnet.py and model/semseg/deeplabv3plus.py (and torchvision's resnet.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cityscapes_lab.errors import ConfigError, DataError
from cityscapes_lab.models import build_model, model_spec
from cityscapes_lab.models.deeplabv3plus import DeepLabV3Plus, load_backbone

OPTIONS = model_spec("deeplabv3plus_r50").test_options  # depths (1, 1, 1, 2), width 8: same layout, small
IMAGES = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def bn(prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name in BN]


def published_backbone_keys(depths, stem: str) -> set[str]:
    """The keys of an ImageNet ResNet file: UniMatch's deep stem (conv1 a Sequential of conv, BN, ReLU, conv, BN,
    ReLU, conv: indices 0 1 3 4 6; its last BN is bn1) or torchvision's 7x7 conv1; then the bottlenecks (every
    layer's first block with a downsample projection) and the ImageNet classifier fc."""
    keys = (["conv1.0.weight", *bn("conv1.1"), "conv1.3.weight", *bn("conv1.4"), "conv1.6.weight"]
            if stem == "deep" else ["conv1.weight"])
    keys += bn("bn1")
    for layer, blocks in enumerate(depths, start=1):
        for block in range(blocks):
            for conv in (1, 2, 3):
                keys += [f"layer{layer}.{block}.conv{conv}.weight", *bn(f"layer{layer}.{block}.bn{conv}")]
        keys += [f"layer{layer}.0.downsample.0.weight", *bn(f"layer{layer}.0.downsample.1")]
    return set(keys + ["fc.weight", "fc.bias"])


def published_unimatch_keys(depths) -> set[str]:
    """The keys of a UniMatch checkpoint's "model": DDP's "module." + backbone.* + the DeepLabV3+ head."""
    backbone = {f"backbone.{k}" for k in published_backbone_keys(depths, "deep") if not k.startswith("fc.")}
    head = []
    for branch in ("b0", "b1", "b2", "b3"):
        head += [f"head.{branch}.0.weight", *bn(f"head.{branch}.1")]
    head += ["head.b4.gap.1.weight", *bn("head.b4.gap.2"), "head.project.0.weight", *bn("head.project.1")]
    head += ["reduce.0.weight", *bn("reduce.1"), "fuse.0.weight", *bn("fuse.1"), "fuse.3.weight", *bn("fuse.4")]
    head += ["classifier.weight", "classifier.bias"]
    return {f"module.{k}" for k in backbone | set(head)}


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Random biases and BatchNorm statistics (a fresh model's zeros and ones would hide a swapped tensor)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.1, generator=generator)
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.num_batches_tracked.fill_(1000)
            elif isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias.normal_(0, 0.1, generator=generator)
    return model.eval()


def model(name: str = "deeplabv3plus_r50", seed: int = 0, **options) -> DeepLabV3Plus:
    torch.manual_seed(seed)
    return randomised(build_model(name, 19, **{**OPTIONS, **options}))


def backbone_file(source: DeepLabV3Plus, path, with_counters: bool = True) -> None:
    """An ImageNet ResNet file: a bare state dict of the encoder plus a 1000-class fc (torchvision's 2017 files
    have no BatchNorm counters)."""
    state = {k: v for k, v in source.backbone.state_dict().items()
             if with_counters or not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.randn(1000, source.backbone.channels[3])
    state["fc.bias"] = torch.randn(1000)
    torch.save(state, path)


def unimatch_file(source: DeepLabV3Plus, path) -> None:
    """A checkpoint as UniMatch's unimatch.py writes best.pth: {"model", "optimizer", "epoch", "previous_best"},
    the model wrapped in DistributedDataParallel; previous_best is a NumPy float (np.mean of the IoUs)."""
    parameters = list(source.parameters())
    optimizer = {"state": {0: {"momentum_buffer": torch.randn_like(parameters[0])}},
                 "param_groups": [{"lr": 0.005, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
                                   "nesterov": False, "maximize": False, "foreach": None, "differentiable": False,
                                   "params": list(range(len(parameters)))}]}
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "optimizer": optimizer,
                "epoch": 239, "previous_best": np.float64(75.03)}, path)


@torch.no_grad()
def features(network: DeepLabV3Plus) -> list[torch.Tensor]:
    return network.backbone(network.normalise(IMAGES))


@pytest.mark.parametrize("name", ["deeplabv3plus_r50", "deeplabv3plus_r101"])
@pytest.mark.parametrize("stem,counters", [("deep", True), ("plain", False)])
def test_imagenet_backbone_files_load_into_the_backbone_only(name, stem, counters, tmp_path):
    """UniMatch's resnet50.pth/resnet101.pth (deep stem) and torchvision's ResNet files (plain stem): the same
    encoder features after the round trip; the head keeps its own initialisation."""
    source = model(name, seed=0, stem=stem)
    path = tmp_path / f"{stem}.pth"
    backbone_file(source, path, counters)
    published = {k for k in published_backbone_keys(OPTIONS["depths"], stem)
                 if counters or not k.endswith("num_batches_tracked")}
    assert set(torch.load(path, weights_only=True)) == published
    torch.manual_seed(1)
    loaded = build_model(name, 19, backbone_weights=path, stem=stem, **OPTIONS).eval()
    for ours, theirs in zip(features(loaded), features(source)):
        assert torch.equal(ours, theirs)
    assert not torch.equal(loaded.classifier.weight, source.classifier.weight)
    fresh = randomised(build_model(name, 19, stem=stem, **OPTIONS))
    assert load_backbone(fresh, path) is fresh and torch.equal(features(fresh)[3], features(source)[3])


def test_unimatch_checkpoint_loads_with_the_same_logits(tmp_path, monkeypatch):
    """The released layout (DDP "module." keys inside {"model", "optimizer", "epoch", "previous_best"}), read
    with torch.load(weights_only=True), gives the saved network's logits exactly."""
    source = model("deeplabv3plus_r101", seed=0)
    path = tmp_path / "best.pth"
    unimatch_file(source, path)
    assert set(torch.load(path, weights_only=False)["model"]) == published_unimatch_keys(OPTIONS["depths"])
    calls = []
    original_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    loaded = build_model("deeplabv3plus_r101", 19, weights=path, **OPTIONS).eval()
    assert calls == [True]
    with torch.no_grad():
        assert torch.equal(loaded(IMAGES), source(IMAGES))


@pytest.mark.parametrize("layout", ["deep", "plain", "unimatch"])
@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_a_file_with_a_missing_or_an_extra_key_is_refused_in_one_line(layout, change, tmp_path):
    stem = "plain" if layout == "plain" else "deep"
    source = model(stem=stem)
    path = tmp_path / f"{layout}-{change}.pth"
    (unimatch_file if layout == "unimatch" else backbone_file)(source, path)
    content = torch.load(path, weights_only=False)
    state = content["model"] if layout == "unimatch" else content
    prefix = "module." if layout == "unimatch" else ""
    if change == "missing":
        del state[f"{prefix}{'backbone.' if prefix else ''}layer4.1.conv2.weight"]
    else:
        state[f"{prefix}extra.weight"] = torch.zeros(3)
    torch.save(content, path)
    target = model(stem=stem, seed=1)
    with pytest.raises(DataError) as error:
        if layout == "unimatch":
            build_model("deeplabv3plus_r50", 19, weights=path, **OPTIONS)
        else:
            load_backbone(target, path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path))
    assert ("1 missing keys (" + ("backbone." if prefix else "") + "layer4.1.conv2.weight)" in message
            if change == "missing" else "1 unexpected keys (extra.weight)" in message)


def test_a_backbone_file_of_the_other_stem_is_refused_naming_the_stems(tmp_path):
    path = tmp_path / "resnet50.pth"
    backbone_file(model(stem="deep"), path)
    with pytest.raises(DataError, match=r"missing keys \(conv1\.weight\).*stem='plain': torchvision's"):
        build_model("deeplabv3plus_r50", 19, backbone_weights=path, stem="plain", **OPTIONS)


def test_output_stride_16_with_layer4_dilated_after_its_first_block():
    """UniMatch's replace_stride_with_dilation [False, False, True]: layer4 keeps 1/16; its first block's 3x3 conv
    is undilated (stride 1, dilation 1: the dilation the layer had, as in UniMatch's and torchvision's
    _make_layer), the following blocks are dilated by 2; ASPP at 6/12/18; low-level features at 1/4."""
    network = model()
    inputs = {}

    def recorder(key: str):
        def hook(module, args) -> None:  # a pre-hook returning None changes nothing
            inputs[key] = tuple(args[0].shape[-2:])
        return hook

    network.head.register_forward_pre_hook(recorder("aspp"))
    network.reduce.register_forward_pre_hook(recorder("low"))
    with torch.no_grad():
        logits = network(torch.rand(2, 3, 128, 192))
    assert logits.shape == (2, 19, 128, 192) and logits.dtype == torch.float32
    assert inputs == {"aspp": (8, 12), "low": (32, 48)}  # 1/16 and 1/4 of 128x192
    first, second = network.backbone.layer4
    assert first.conv2.stride == (1, 1) and first.conv2.dilation == (1, 1) and first.conv2.padding == (1, 1)
    assert first.downsample[0].stride == (1, 1)
    assert second.conv2.dilation == (2, 2) and second.conv2.padding == (2, 2)
    assert network.backbone.layer3[0].conv2.stride == (2, 2) and network.backbone.layer3[0].conv2.dilation == (1, 1)
    assert [network.head.b1[0].dilation, network.head.b2[0].dilation, network.head.b3[0].dilation] == [
        (6, 6), (12, 12), (18, 18)]
    assert not any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in network.modules())  # as UniMatch


def test_features_and_decode_compose_to_the_forward_and_inputs_are_imagenet_normalised():
    """features/decode are UniMatch's base_forward/_decode (what its feature perturbation needs)."""
    network = model()
    with torch.no_grad():
        c1, c4 = network.features(IMAGES)
        logits = torch.nn.functional.interpolate(network.decode(c1, c4), size=(64, 96), mode="bilinear",
                                                 align_corners=True)
        assert torch.equal(logits, network(IMAGES))
    grey = torch.full((1, 3, 2, 2), 0.5)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(network.normalise(grey)[0, :, 0, 0], expected)


def test_the_head_keeps_pytorchs_default_initialisation_as_unimatch_unless_asked():
    """UniMatch initialises only its ResNet (kaiming fan_out); the head keeps PyTorch's default (|w| <= 1/sqrt(fan
    in)); head_init="kaiming" (CPS's choice, and the tests' reduced size) draws it kaiming-normal."""
    torch.manual_seed(0)
    default = DeepLabV3Plus(19, depths=(1, 1, 1, 1), width=8)
    kaiming = DeepLabV3Plus(19, depths=(1, 1, 1, 1), width=8, head_init="kaiming")
    bound = default.fuse[0].weight[0].numel() ** -0.5
    assert default.fuse[0].weight.abs().max() <= bound < kaiming.fuse[0].weight.abs().max()
    with pytest.raises(ConfigError, match="head_init"):
        DeepLabV3Plus(19, head_init="xavier")
    with pytest.raises(ConfigError, match="stem must be"):
        build_model("deeplabv3plus_r50", 19, stem="7x7")


# the full-size networks at 19 classes: every parameter (UniMatch's count_params, its logs' "Total params")
# (torchvision's ResNet-50/101 without fc: 23,508,032 / 42,500,160; the deep stem adds 103,296 + 20,480 in layer1)
PARAMETERS = {("deeplabv3plus_r50", "deep"): 40_475_443, ("deeplabv3plus_r101", "deep"): 59_467_571,
              ("deeplabv3plus_r50", "plain"): 40_351_667, ("deeplabv3plus_r101", "plain"): 59_343_795}
UNIMATCH_LOGGED = {"deeplabv3plus_r50": 40.5, "deeplabv3plus_r101": 59.5}  # training-logs/Cityscapes/ResNet-*


@pytest.mark.parametrize("name,stem", sorted(PARAMETERS))
def test_full_size_parameter_counts(name, stem):
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        network = build_model(name, 19, stem=stem)
    count = sum(p.numel() for p in network.parameters())
    print(f"{name} stem={stem}: {count:,} parameters")
    assert count == PARAMETERS[name, stem]
    if stem == "deep":
        assert round(count / 1e6, 1) == UNIMATCH_LOGGED[name]


@pytest.mark.parametrize("name,variant", [("deeplabv3plus_r50", "R50"), ("deeplabv3plus_r101", "R101")])
def test_registry_entries_name_the_released_unimatch_checkpoints(name, variant):
    """The eight UniMatch Cityscapes files (CPS partition, README numbers), read in the unimatch layout and
    reproduced with UniMatch V1's own sliding-window rule."""
    from cityscapes_lab.data.split_families import FAMILIES
    from cityscapes_lab.engine.prediction import PROTOCOLS

    spec = model_spec(name)
    assert spec.layout == "unimatch" and spec.align_corners and spec.licence.startswith("MIT")
    published = {"R50": [75.0, 76.8, 77.5, 78.6], "R101": [76.6, 77.9, 79.2, 79.5]}[variant]
    assert [w.miou for w in spec.weights] == published
    assert [w.fraction for w in spec.weights] == ["1/16", "1/8", "1/4", "1/2"]
    for weights in spec.weights:
        assert weights.split_family == "cps" and weights.fraction in FAMILIES["cps"].lists
        assert weights.protocol == "slide-unimatch-v1" and weights.protocol in PROTOCOLS
        assert weights.url.startswith("https://drive.google.com/file/d/") and "801x801 every 534" in weights.number
