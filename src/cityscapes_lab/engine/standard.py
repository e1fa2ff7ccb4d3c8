"""Training any registered model on the standard protocol, on one device or several (``torchrun`` +
DistributedDataParallel): the ``standard`` kind of the one training loop, with its files: ``last.pt`` after every
epoch (resumed when present), ``best.pt`` (the epoch with the best val mIoU) and ``result.json``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .. import atomic
from ..config import Config
from ..data.prepared import PreparedData
from ..models.checkpoints import save_checkpoint
from ..models.registry import architecture_options
from . import kinds
from .runtime import Runtime
from .train import train


def train_standard(name: str, model: nn.Module, options: dict, data: PreparedData, config: Config, out: Path,
                   runtime: Runtime, train_split: str = "train", val_split: str = "val", seed: int = 0) -> dict:
    """Train (or fine-tune) ``model`` on ``train_split``; keep the epoch with the best val mIoU in ``best.pt``.
    Every process sees its share of each global batch of ``train.batch_size``. Returns the summary written to
    ``out/result.json`` by the main process."""
    out = Path(out)
    training = kinds.standard(model, data.split(train_split), data.split(val_split), config, runtime, seed=seed,
                              protocol=data.protocol)
    result = train(model, training, config.train, runtime, checkpoint=out / "last.pt", desc=f"train {name}")
    best_miou = result.best.get("val_miou", float("nan"))
    if runtime.main and result.best_state is not None:
        save_checkpoint(out / "best.pt", {
            "model_name": name, "model_options": architecture_options(options), "num_classes": data.num_classes,
            "protocol": data.protocol, "input_size": None, "state_dict": result.best_state, "val_miou": best_miou,
            "epoch": result.best_epoch + 1})
    summary = {"model": name, "world_size": runtime.world_size, "epochs": result.epochs, "best_val_miou": best_miou,
               "history": result.history, "device": runtime.device.type,
               # which labeled subsets (cps, u2pl, seeded): a result compares only with results on the same family
               "data": {"path": str(data.root), "train_split": train_split, "val_split": val_split,
                        "split_family": data.split_family}}
    if runtime.main:
        atomic.write_text(out / "result.json", json.dumps(summary, indent=2) + "\n")
    if runtime.world_size > 1:
        torch.distributed.barrier()
    return summary
