"""Training any registered model on the standard protocol, on one device or several (``torchrun`` +
DistributedDataParallel): online augmentation on the device, cross-entropy with 255 ignored (plus the auxiliary
head's loss), a checkpoint every epoch (resumed when present), validation by the official mIoU with the
confusion matrix summed over processes."""

from __future__ import annotations

import inspect
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .. import atomic
from ..config import Config
from ..data.online_augment import augment_batch
from ..data.prepared import PreparedData
from ..labels import IGNORE_INDEX, TRAINID_TO_LABELID
from ..metrics.official import ConfusionMatrix, official_scores
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import BatchStream, TrainingDiverged, autocast, predict, resolve_device, resolve_precision, to_batch
from .losses import pixel_cross_entropy
from .optim import DecoupledAdamW


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one when not started by torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_processes(device: str) -> Processes:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs) when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    wanted = resolve_device(device)
    if wanted.type == "cpu":  # share the cores between the processes
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world_size))
    if world_size == 1:
        return Processes(0, 1, wanted)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if wanted.type == "cuda":
        torch.cuda.set_device(local_rank)
        wanted = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), wanted)


def has_aux_head(model: nn.Module) -> bool:
    """Whether the network can return its auxiliary head's logits (``forward(images, return_aux=True)``)."""
    return "return_aux" in inspect.signature(model.forward).parameters


def _loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, precision: str, aux_weight: float,
          aux: bool) -> torch.Tensor:
    with autocast(precision, images.device):
        outputs = model(images, return_aux=True) if aux else model(images)
    if isinstance(outputs, tuple):
        main, aux = outputs
        return (pixel_cross_entropy(main.float(), labels, IGNORE_INDEX)
                + aux_weight * pixel_cross_entropy(aux.float(), labels, IGNORE_INDEX))
    return pixel_cross_entropy(outputs.float(), labels, IGNORE_INDEX)


def validate(model: nn.Module, data: PreparedData, split_name: str, processes: Processes, batch_size: int,
             precision: str) -> float:
    """Official mIoU on a split: each process predicts its share of the images, the counts are summed."""
    split = data.split(split_name)
    rows = np.arange(processes.rank, len(split), processes.world_size)
    confusion = ConfusionMatrix()
    if len(rows):
        images = split.images.subset(rows) if hasattr(split.images, "subset") else split.images[rows]
        predicted = predict(model, images, batch_size, processes.device, precision)
        confusion.add(TRAINID_TO_LABELID[predicted], TRAINID_TO_LABELID[np.asarray(split.labels[rows])])
    return official_scores(confusion.all_reduce()).miou


@dataclass
class _Run:
    """The state of a standard-protocol training that a checkpoint keeps."""

    epoch: int = 0
    best: float = -math.inf
    history: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "best": self.best, "history": self.history}


def _train_epoch(wrapped: nn.Module, optimizer: torch.optim.Optimizer, split, stream: BatchStream, steps: range,
                 config: Config, processes: Processes, precision, aux: bool, seed: int, progress) -> float:
    """One epoch: each process takes its share of every global batch, augments it on its device, steps."""
    train = config.train
    total_steps = train.epochs * len(steps)
    generator = torch.Generator(device=processes.device)
    losses = []
    wrapped.train()
    for step in steps:
        if train.schedule == "poly":
            for group in optimizer.param_groups:
                group["lr"] = train.lr * (1 - step / total_steps) ** 0.9
        generator.manual_seed(seed * 1_000_003 + step * 101 + processes.rank)
        images, labels = to_batch(split.images, split.labels, stream.batch(step)[processes.rank::processes.world_size],
                                  processes.device, False)
        images, labels = augment_batch(images, labels, config.online, generator)
        if train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = _loss(wrapped, images, labels, precision, train.aux_weight, aux)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the loss became {float(loss)} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        progress(1)
    return float(np.mean(losses))


def train_standard(name: str, model: nn.Module, options: dict, data: PreparedData, config: Config, out: Path,
                   processes: Processes, train_split: str = "train", val_split: str = "val", seed: int = 0) -> dict:
    """Train (or fine-tune) ``model`` on ``train_split``; keep the epoch with the best val mIoU in ``best.pt``.
    Every process sees its share of each global batch of ``train.batch_size``. Returns the summary written to
    ``out/result.json`` by the main process."""
    train = config.train
    precision = resolve_precision(train.precision, processes.device)
    model.to(processes.device)
    if train.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = DecoupledAdamW(model.parameters(), lr=train.lr, decay=train.weight_decay, eps=train.adam_eps)
    split = data.split(train_split)
    steps = train.steps_per_epoch or max(1, len(split) // train.batch_size)
    stream = BatchStream(len(split), train.batch_size, seed)
    out, run = Path(out), _Run()
    if (out / "last.pt").exists():
        saved = load_checkpoint(out / "last.pt", map_location=processes.device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        run = _Run(saved["epoch"], saved["best"], saved["history"])
    aux = has_aux_head(model) and train.aux_weight > 0
    wrapped = nn.parallel.DistributedDataParallel(model) if processes.world_size > 1 else model
    bar = tqdm(total=train.epochs * steps, initial=run.epoch * steps, desc=f"train {name}", unit="step",
               disable=None if processes.main else True, dynamic_ncols=True)
    while run.epoch < train.epochs:
        start = time.perf_counter()
        loss = _train_epoch(wrapped, optimizer, split, stream, range(run.epoch * steps, (run.epoch + 1) * steps),
                            config, processes, precision, aux, seed, bar.update)
        score = validate(model, data, val_split, processes, train.eval_batch_size, precision)
        run.epoch += 1
        run.history.append({"epoch": run.epoch, "loss": loss, "val_miou": score,
                            "seconds": time.perf_counter() - start})
        if processes.main:
            if score > run.best:
                run.best = score
                save_checkpoint(out / "best.pt", {
                    "model_name": name, "model_options": options, "num_classes": data.num_classes,
                    "protocol": data.protocol, "input_size": None,
                    "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "val_miou": score, "epoch": run.epoch})
            save_checkpoint(out / "last.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                              **run.as_dict()})
        if processes.world_size > 1:
            dist.barrier()  # every process resumes from the same checkpoint after a stop
    bar.close()
    summary = {"model": name, "world_size": processes.world_size, "epochs": run.epoch, "best_val_miou": run.best,
               "history": run.history, "device": processes.device.type}
    if processes.main:
        atomic.write_text(out / "result.json", json.dumps(summary, indent=2) + "\n")
    return summary
