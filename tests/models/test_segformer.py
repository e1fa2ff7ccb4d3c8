"""SegFormer: numerically the same network as Hugging Face's SegformerForSemanticSegmentation (random weights in
the published file layout, as model.safetensors and as pytorch_model.bin), its input normalisation that of the
checkpoints' image processor, and a file that does not fit refused in one line naming it.

transformers is a test-only dependency; nothing is downloaded (HF_HUB_OFFLINE=1, configurations built here)."""

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from cityscapes_lab.errors import DataError  # noqa: E402
from cityscapes_lab.models import build_model, model_spec  # noqa: E402

# a reduced configuration of the same structure: four stages, every reduction ratio, two blocks in one stage
REDUCED = dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 2, 1, 1], num_attention_heads=[1, 2, 3, 4],
               decoder_hidden_size=32)
OURS = dict(widths=(16, 32, 48, 64), depths=(1, 2, 1, 1), heads=(1, 2, 3, 4), decoder_width=32)


def reference(config: dict, num_labels: int, seed: int = 0):
    """Hugging Face's model with every weight, bias, norm and BatchNorm statistic random (not its init, where
    norms are 1 and 0 and a swapped norm would go unnoticed), in eval mode."""
    config = transformers.SegformerConfig(num_labels=num_labels, **config)
    torch.manual_seed(seed)
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if tensor.dim() > 1:
                tensor.normal_(0, tensor[0].numel() ** -0.5)
            elif name.endswith("weight"):
                tensor.uniform_(0.5, 1.5)
            else:
                tensor.normal_(0, 0.1)
        bn = model.decode_head.batch_norm
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    return model


def published_files(model, folder) -> dict:
    """The model as the hub holds it: save_pretrained's model.safetensors (transformers writes the original key
    names, "segformer.encoder.block.0.0.attention.self.query.weight", ...) and the same tensors as
    pytorch_model.bin (torch.save of the state dict, as the 2021 uploads)."""
    model.save_pretrained(folder / "hf", save_original_format=True)
    state = load_file(folder / "hf" / "model.safetensors")
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in state
    assert "decode_head.linear_c.0.proj.weight" in state and "decode_head.batch_norm.running_var" in state
    torch.save(state, folder / "pytorch_model.bin")
    save_file(state, folder / "weights.pt")  # a safetensors file under another name: recognised by its bytes
    return state


def images(height: int, width: int, count: int = 2, seed: int = 0) -> np.ndarray:
    """Smooth random images (not noise: the sliding/resizing code sees structure), (count, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 3, height // 8 + 2, width // 8 + 2)).astype(np.float32)
    fine = F.interpolate(torch.from_numpy(coarse), size=(height, width), mode="bicubic", align_corners=False)
    noisy = fine + torch.from_numpy(rng.normal(0, 12, fine.shape).astype(np.float32))
    return noisy.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def hf_logits(model, batch: np.ndarray) -> torch.Tensor:
    """Hugging Face's logits for uint8 RGB images, preprocessed by the checkpoints' image processor (rescale by
    1/255, ImageNet mean and std; no resize), upsampled from 1/4 as ours are (bilinear, align_corners=False)."""
    processor = transformers.SegformerImageProcessorPil(do_resize=False)
    pixels = processor(images=list(batch), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    return F.interpolate(logits, size=batch.shape[1:3], mode="bilinear", align_corners=False)


def ours(model, batch: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(batch).permute(0, 3, 1, 2))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segformer")
    model = reference(REDUCED, num_labels=7)
    published_files(model, folder)
    batch = images(83, 117)  # not a multiple of 32: every stage rounds up
    return folder, batch, hf_logits(model, batch)


@pytest.mark.parametrize("file", ["hf/model.safetensors", "pytorch_model.bin", "weights.pt"])
def test_matches_transformers_loaded_from_the_published_layout(reduced, file):
    """Hugging Face's LayerNorms all use eps 1e-5 (NVlabs' blocks 1e-6): with that option ours is the same."""
    folder, batch, expected = reduced
    model = build_model("segformer_b1", 7, weights=folder / file, layer_norm_eps=1e-5, **OURS).eval()
    got = ours(model, batch)
    assert got.shape == (2, 7, 83, 117) and got.dtype == torch.float32
    assert relative_error(got, expected) < 1e-5
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.999


def test_the_b0_configuration_matches_transformers_with_nvlabs_layer_norms(tmp_path):
    """The exact B0 (19 classes) as the registry builds it, against Hugging Face's with NVlabs' epsilons (1e-6 in
    the blocks and after each stage; the patch embeddings and key/value reductions keep 1e-5); the same file
    through `predict`'s loader (safetensors) with the "slide" protocol of the published number."""
    from cityscapes_lab.engine.prediction import label_ids_of, load_predictor

    b0 = dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
              sr_ratios=[8, 4, 2, 1], mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=256)
    model = reference(b0, num_labels=19, seed=1)
    for name, module in model.named_modules():  # the blocks' two norms and each stage's closing one
        block_norm = name.endswith(("layernorm_before", "layernorm_after"))
        if block_norm or re.fullmatch(r"segformer\.stages\.\d\.layer_norm", name):
            module.eps = 1e-6
    published_files(model, tmp_path)
    batch = images(70, 90, count=1, seed=1)
    expected = hf_logits(model, batch)
    loaded = build_model("segformer_b0", 19, weights=tmp_path / "hf" / "model.safetensors").eval()
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    got = ours(loaded, batch)
    assert relative_error(got, expected) < 1e-5

    predictor = load_predictor("segformer_b0", tmp_path / "hf" / "model.safetensors", "slide", device="cpu")
    assert (predictor.protocol.crop, predictor.protocol.stride) == ((1024, 1024), (768, 768))
    assert not predictor.protocol.align_corners
    predicted = predictor(batch[0])
    assert np.mean(predicted == label_ids_of(expected.argmax(1)[0].numpy().astype(np.uint8), 19)) > 0.999


def test_the_registry_entries_are_the_published_configurations():
    """B0..B5: widths, depths and decoder widths of the Cityscapes checkpoints (parameter counts follow from
    them), their files on huggingface.co, the sliding window of the published numbers."""
    expected = {"b0": 3_719_027, "b1": 13_682_131, "b2": 27_361_235, "b3": 47_237_075, "b4": 64_007_635,
                "b5": 84_607_955}
    for variant, parameters in expected.items():
        spec = model_spec(f"segformer_{variant}")
        assert spec.layout == "hf_segformer" and spec.slide == ((1024, 1024), (768, 768)) and not spec.align_corners
        (published,) = spec.weights
        assert published.url == (f"https://huggingface.co/nvidia/segformer-{variant}-finetuned-cityscapes-1024-1024"
                                 "/resolve/main/pytorch_model.bin") and published.protocol == "slide"
        with torch.device("meta"):  # shapes only: B5 would take seconds to initialise
            model = build_model(f"segformer_{variant}", 19)
        assert sum(p.numel() for p in model.parameters()) == parameters, variant
    # NVlabs' LayerNorm epsilons: 1e-6 in the blocks and closing each stage, PyTorch's 1e-5 elsewhere
    eps = {name: m.eps for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps["encoder.block.2.39.layer_norm_1"] == eps["encoder.block.2.39.layer_norm_2"] == 1e-6
    assert eps["encoder.layer_norm.3"] == 1e-6
    assert eps["encoder.patch_embeddings.0.layer_norm"] == eps["encoder.block.0.0.attention.self.layer_norm"] == 1e-5


def test_a_file_that_does_not_fit_is_refused_in_one_line_naming_it(reduced, tmp_path):
    folder = reduced[0]
    state = load_file(folder / "hf" / "model.safetensors")
    missing = {k: v for k, v in state.items() if k != "segformer.encoder.block.1.1.mlp.dwconv.dwconv.weight"}
    save_file(missing, tmp_path / "missing.safetensors")
    torch.save({**state, "decode_head.extra.weight": torch.zeros(3)}, tmp_path / "unexpected.bin")
    (tmp_path / "damaged.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cases = [("missing.safetensors", "1 missing keys (encoder.block.1.1.mlp.dwconv.dwconv.weight)"),
             ("unexpected.bin", "1 unexpected keys (decode_head.extra.weight)"),
             ("damaged.safetensors", "not a readable safetensors file")]
    for name, problem in cases:
        with pytest.raises(DataError) as caught:
            build_model("segformer_b1", 7, weights=tmp_path / name, **OURS)
        message = str(caught.value)
        assert message.startswith(f"{tmp_path / name}: ") and problem in message and "\n" not in message


def test_recompute_gives_the_same_gradients():
    """Recomputing the encoder's blocks in the backward pass changes nothing but memory."""
    batch = torch.from_numpy(images(64, 96)).permute(0, 3, 1, 2)
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = build_model("segformer_b0", 5, size="tiny-test", drop_path_rate=0.2)
        model.recompute = recompute
        torch.manual_seed(1)  # the same dropout and stochastic-depth draws in both runs
        model(batch).logsumexp(1).mean().backward()
        results.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*results))
