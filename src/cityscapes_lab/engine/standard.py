"""Training any registered model on the standard protocol, on one device or several (``torchrun`` +
DistributedDataParallel): the ``standard`` kind of the one training loop, with its files: ``run.json`` (what the
training is: settings, model, data, splits, seed), ``last.pt`` after every epoch (resumed when present, by the
same training only), ``best.pt`` (the epoch with the best val mIoU) and ``result.json``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from .. import atomic
from ..config import Config
from ..errors import ConfigError
from ..data.prepared import PreparedData
from ..models.checkpoints import save_checkpoint
from ..models.registry import architecture_options
from . import kinds
from .runtime import Runtime
from .train import train


RUN_RECORD = "run.json"
TRAINING_SECTIONS = ("train.", "online.")


def training_identity(config: Config, data: PreparedData, name: str, options: dict, weights: Path | None,
                      train_split: str, val_split: str, seed: int) -> dict:
    """What makes a training this training: its result settings, model, starting weights, data (by its
    ``meta.json``, so a moved folder is the same data), splits and seed."""
    meta = Path(data.root) / "meta.json"
    return {"settings": config.to_dict(), "model": name, "model_options": options,
            "weights": str(Path(weights).resolve()) if weights else None,
            "data_meta_sha256": hashlib.sha256(meta.read_bytes()).hexdigest() if meta.exists() else None,
            "train_split": train_split, "val_split": val_split, "seed": seed}


def check_same_training(out: Path, config: Config, identity: dict) -> None:
    """Refuse to continue the training in ``out`` with other settings: its ``last.pt`` would be resumed into a
    training it is not (ConfigError naming what differs). A ``last.pt`` without ``run.json`` (which is written
    before the first epoch) is refused too: nothing says which training it belongs to."""
    record = Path(out) / RUN_RECORD
    if not record.exists():
        if (Path(out) / "last.pt").exists():
            raise ConfigError(f"{Path(out) / 'last.pt'}: a resume point without {RUN_RECORD}, so nothing says which "
                              "training it belongs to; delete it to start this training afresh, or give another "
                              "--out")
        return
    try:
        before = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{record}: unreadable ({exc}); delete it to continue the training in {out} as "
                          "it is, or give another --out") from None
    # the sections a standard training reads (a changed [study] or [semisup] setting is not another training)
    changed = [line for line in config.differences(before.get("settings", {})) if line.startswith(TRAINING_SECTIONS)]
    changed += [f"{key}: {json.dumps(before.get(key))} -> {json.dumps(value)}" for key, value in identity.items()
                if key != "settings" and before.get(key) != value]
    if changed:
        shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise ConfigError(f"{out}: holds a training with other settings ({shown}); rerun it with the same "
                          "settings to continue it, or give another --out")


def record_training(out: Path, identity: dict) -> None:
    """Write ``run.json`` (atomically): what ``check_same_training`` compares a rerun with."""
    atomic.write_text(Path(out) / RUN_RECORD, json.dumps(identity, indent=2, default=str) + "\n")


def train_standard(name: str, model: nn.Module, options: dict, data: PreparedData, config: Config, out: Path,
                   runtime: Runtime, train_split: str = "train", val_split: str = "val", seed: int = 0) -> dict:
    """Train (or fine-tune) ``model`` on ``train_split``; keep the epoch with the best val mIoU (whole images, or
    under train.val_rule) in ``best.pt``.
    Every process sees its share of each global batch of ``train.batch_size``. Returns the summary written to
    ``out/result.json`` by the main process."""
    out = Path(out)
    training = kinds.standard(model, data.split(train_split), data.split(val_split), config, runtime, seed=seed,
                              protocol=data.protocol, val_rule=kinds.validation_rule(config.train, name))
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
