"""Published checkpoint layouts round-trip into our modules (prefixes, fp16, 150-class heads), strictly and
safely: a checkpoint that would run code is refused, one that does not fit lists its missing and unexpected keys."""

import os

import numpy as np
import pytest
import torch

from cityscapes_lab.errors import DataError
from cityscapes_lab.models import build_model, model_spec

IMAGES = torch.rand(1, 3, 64, 96)


def fp16_exact(model: torch.nn.Module) -> torch.nn.Module:
    """Round the weights to fp16 so that an fp16 release of them carries exactly the same values."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model.eval()


def published_hrnet(model: torch.nn.Module, path, legacy: bool) -> None:
    """The official HRNet-OCR layout: a FullModel wrapper's keys ("model." + ours) plus the loss' class weights."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["loss.criterion.weight"] = torch.ones(19)
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)


def test_hrnet_ocr_round_trip(tmp_path):
    options = model_spec("hrnet_w48_ocr").test_options
    torch.manual_seed(0)
    original = fp16_exact(build_model("hrnet_w48_ocr", 19, **options))
    for legacy in (True, False):  # the 2019 files are in PyTorch's legacy (non-zip) format
        path = tmp_path / f"hrnet_{legacy}.pth"
        published_hrnet(original, path, legacy)
        loaded = build_model("hrnet_w48_ocr", 19, weights=path, **options).eval()
        with torch.no_grad():
            assert torch.equal(loaded(IMAGES), original(IMAGES))


@pytest.mark.parametrize("name", ["upernet_internimage_l", "upernet_internimage_xl"])
def test_mmseg_release_round_trip_with_fp16_and_150_class_heads(name, tmp_path):
    """mmcv's {"meta", "state_dict"} wrapper, fp16 values, 150-class heads: the loaded 19-class model gives the
    first 19 logits of the 150-class one."""
    options = model_spec(name).test_options
    torch.manual_seed(0)
    original = fp16_exact(build_model(name, 150, **options))
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in original.state_dict().items()}
    path = tmp_path / "release.pth"
    torch.save({"meta": {"CLASSES": ["road"] * 150, "seed": np.int64(0), "iter": 160000}, "state_dict": state}, path)
    loaded = build_model(name, 19, weights=path, **options).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(IMAGES), original(IMAGES)[:, :19], atol=1e-5)


def test_our_own_checkpoints_load_into_zoo_models(tmp_path):
    from cityscapes_lab.models.checkpoints import save_checkpoint

    options = model_spec("hrnet_w48_ocr").test_options
    model = build_model("hrnet_w48_ocr", 19, **options).eval()
    save_checkpoint(tmp_path / "best.pt", {"model_name": "hrnet_w48_ocr", "state_dict": model.state_dict()})
    loaded = build_model("hrnet_w48_ocr", 19, weights=tmp_path / "best.pt", **options).eval()
    with torch.no_grad():
        assert torch.equal(loaded(IMAGES), model(IMAGES))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": Payload()}, path)
    with pytest.raises(DataError, match="refused: loading it would run code"):
        build_model("unet_paper", 35, weights=path)
    assert not (tmp_path / "pwned").exists()


def as_written_by_numpy_1(path, legacy: bool) -> None:
    """Rename NumPy 2's pickled globals (``numpy._core...``) to the NumPy 1 names (``numpy.core...``) in a saved
    checkpoint, as in mmcv files written under NumPy 1.x; no NumPy 1 needed."""
    import zipfile

    def rename(pickled: bytes) -> bytes:
        assert b"cnumpy._core.multiarray\n" in pickled  # the test must exercise the rename
        return pickled.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")

    if legacy:  # a stream of pickles: GLOBAL opcodes are newline-terminated text, so a rename changes no offsets
        path.write_bytes(rename(path.read_bytes()))
        return
    with zipfile.ZipFile(path) as archive:
        records = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for info, data in records:
            archive.writestr(info, rename(data) if info.filename.endswith("data.pkl") else data)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_an_mmcv_checkpoint_written_under_numpy_1_loads_safely(legacy, tmp_path):
    """mmseg keeps the best mIoU as a NumPy float in meta["hook_msgs"]; under NumPy 1 the pickle names
    numpy.core.multiarray.scalar, which NumPy 2 knows as numpy._core...: still plain data, so it loads."""
    from cityscapes_lab.models.checkpoints import load_checkpoint

    model = build_model("unet_paper", 35, alpha=0.5)
    path = tmp_path / "mmcv.pth"
    meta = {"hook_msgs": {"best_score": np.float64(0.8162), "best_ckpt": "iter_80000.pth"},
            "seed": np.int64(7), "shape": np.arange(3), "dtype": np.dtype("float32")}
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path, _use_new_zipfile_serialization=not legacy)
    as_written_by_numpy_1(path, legacy)
    content = load_checkpoint(path)
    assert content["meta"]["hook_msgs"]["best_score"] == np.float64(0.8162)
    assert content["meta"]["shape"].tolist() == [0, 1, 2] and content["meta"]["dtype"] == np.float32
    loaded = build_model("unet_paper", 35, weights=path, alpha=0.5)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_a_numpy_1_checkpoint_that_also_names_code_is_refused_in_one_line(tmp_path):
    """NumPy data types are allowed, nothing else: a file naming both is refused with the one-line error."""
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "mixed.pth"
    torch.save({"meta": {"best": np.float64(0.5), "hook": Payload()}, "state_dict": {}}, path)
    as_written_by_numpy_1(path, legacy=False)
    with pytest.raises(DataError, match=r"mixed.pth: refused: loading it would run code it names \(.*system"):
        build_model("unet_paper", 35, weights=path)
    assert not (tmp_path / "pwned").exists()


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    model = build_model("unet_paper", 35, alpha=0.5)
    state = dict(model.state_dict())
    del state["head.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(DataError, match=r"1 missing keys \(head.weight\); 1 unexpected keys \(extra.weight\)"):
        build_model("unet_paper", 35, weights=tmp_path / "partial.pth", alpha=0.5)
    with pytest.raises(DataError, match="keys of another shape"):
        build_model("unet_paper", 19, weights=tmp_path / "partial.pth", alpha=0.5)


def test_full_configurations_have_the_published_sizes():
    hrnet = build_model("hrnet_w48_ocr", 19)
    assert sum(p.numel() for p in hrnet.parameters()) == 70_372_678  # 70.37 M
