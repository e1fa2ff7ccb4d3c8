"""Training on the standard protocol with torchrun and DistributedDataParallel: 2 CPU processes (gloo)."""

import json
import os
import subprocess
import sys

import torch

from cityscapes_lab.models.checkpoints import load_checkpoint
from cityscapes_lab.models import build_model


def test_two_processes_train_with_ddp(tiny_standard, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "cityscapes_lab", "train", "--data", str(tiny_standard), "--model", "unet_paper", "--option",
               "alpha=0.5", "--out", str(out), "--split", "train_labeled_1_2", "--set", "train.epochs=2", "--set",
               "train.batch_size=4", "--set", "train.device=cpu", "--set", "online.crop=[64,64]"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "result.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2 and len(summary["history"]) == 2
    saved = load_checkpoint(out / "best.pt")
    model = build_model(saved["model_name"], saved["num_classes"], **saved["model_options"])
    model.load_state_dict(saved["state_dict"])
    assert saved["num_classes"] == 19 and "2 process(es)" in result.stdout


def test_online_augmentation_crops_flips_and_pads_with_ignore():
    from cityscapes_lab.config import OnlineAugmentConfig
    from cityscapes_lab.data.online_augment import augment_batch

    images = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    labels = torch.randint(0, 19, (2, 32, 48))
    params = OnlineAugmentConfig(scale=[0.5, 0.5], crop=[32, 32], flip=True, jitter=0.0)
    x, y = augment_batch(images, labels, params, torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 32, 32) and y.shape == (2, 32, 32) and x.dtype == torch.float32
    assert (y == 255).any() and set(y[y != 255].unique().tolist()) <= set(range(19))  # padded, never a class
    again = augment_batch(images, labels, params, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], x) and torch.equal(again[1], y)  # seeded
