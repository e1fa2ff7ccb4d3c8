"""Shared fixtures: small generated Cityscapes-format datasets, built once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Nothing may be downloaded, and no tool may write outside the test's temporary folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_scratch = Path(tempfile.mkdtemp(prefix="cityscapes-lab-tests-"))
os.environ.setdefault("MPLCONFIGDIR", str(_scratch / "mpl"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_scratch / "inductor"))

import pytest  # noqa: E402

from cityscapes_lab.data.synth import SynthOptions, synthesize  # noqa: E402

SMALL = dict(width=512, height=256)  # prepares to 112x64 under the paper protocol


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def cli_process():
    """``run_cli(args, kill_after_epoch_saves=None)``: the command line in a new process (see processes.py)."""
    from processes import run_cli

    return run_cli


@pytest.fixture(scope="session")
def raw_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An extracted stand-in download: 24 train, 10 val, 3 test, 2 train_extra frames at 512x256."""
    out = tmp_path_factory.mktemp("raw") / "cityscapes"
    synthesize(out, SynthOptions(counts={"train": 24, "val": 10, "test": 3, "train_extra": 2}, seed=7, **SMALL),
               workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_paper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny paper-protocol folder for training tests: 16 train (4 labeled) and 8 val frames at 64x32."""
    from cityscapes_lab.data.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("tiny")
    synthesize(root / "raw", SynthOptions(counts={"train": 16, "val": 8, "test": 0, "train_extra": 0}, width=256,
                                          height=128, seed=3), workers=1)
    prepare(root / "raw", root / "prepared", PrepareOptions(protocol="paper", labeled_fraction=0.25), workers=1)
    return root / "prepared"


@pytest.fixture(scope="session")
def raw_small_zips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same frames as ``raw_small``, as the official zips."""
    out = tmp_path_factory.mktemp("rawzip") / "cityscapes"
    synthesize(out, SynthOptions(counts={"train": 24, "val": 10, "test": 3, "train_extra": 2}, seed=7, as_zips=True,
                                 **SMALL), workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_standard(raw_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A standard-protocol folder of ``raw_small`` at 128x64 with a seeded 1/2 labeled subset (its 24 generated
    train ids hold no published family's images)."""
    from cityscapes_lab.data.prepare import PrepareOptions, prepare

    out = tmp_path_factory.mktemp("standard") / "prepared"
    prepare(raw_small, out, PrepareOptions(protocol="standard", size=(128, 64), split_family="seeded",
                                           fractions=("1/2",)), workers=1)
    return out


@pytest.fixture(scope="session")
def unet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One of our checkpoints (as the study writes them): it names its model, classes and input size."""
    import torch

    from cityscapes_lab.models.checkpoints import save_checkpoint
    from cityscapes_lab.models import build_model

    torch.manual_seed(0)
    model = build_model("unet_paper", 35, alpha=0.5)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {"model_name": "unet_paper", "model_options": {"alpha": 0.5}, "num_classes": 35,
                           "protocol": "paper", "input_size": [112, 64], "state_dict": model.state_dict()})
    return path
