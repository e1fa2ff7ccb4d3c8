"""How fast one training runs here: a short probe of the training loop at the study's batch and image size, and
of prediction (forward passes only) on the same images."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..models.registry import training_model
from .inference import predict
from .runtime import Runtime, cpu_threads
from .sources import ArraySource
from .steps import CrossEntropy
from .train import Phase, Training, Validation, train


#: how many times faster per pixel a network predicts than it trains, where the probe does not measure it: a training
#: step is a forward pass and a backward pass of about twice its cost
FORWARD_SPEEDUP = 3.0


def probe_rates(config: TrainConfig, height: int, width: int, num_classes: int, steps: int = 2,
                processes: int = 1) -> tuple[float, float]:
    """(images per second of ``config``'s training on random images, how many times faster per pixel the trained
    network predicts them): two epochs of ``steps`` steps, the second one timed (the first pays for warm-up and
    compilation), then two predictions of the batch, the second one timed."""
    torch.set_num_threads(cpu_threads(config.threads, processes))
    runtime = Runtime.from_config(config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (config.batch_size, height, width, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, (config.batch_size, height, width), dtype=np.uint8)
    torch.manual_seed(0)
    model, _ = training_model(config, num_classes)
    phase = Phase(ArraySource(images, labels), CrossEntropy(None), 0, steps)
    probe = dataclasses.replace(config, epochs=2, steps_per_epoch=steps)
    training = Training((phase,), Validation(lambda m: {"probe": 0.0}, "probe"), 2, keras_epsilon=True)
    with tempfile.TemporaryDirectory() as folder:
        result = train(model, training, probe, runtime, checkpoint=Path(folder) / "probe.pt", show_progress=False)
    training_rate = steps * config.batch_size / result.history[-1]["seconds"]
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        predict(model, images, runtime)  # returns classes on the host: the device has finished
        seconds.append(time.perf_counter() - start)
    return training_rate, config.batch_size / seconds[-1] / training_rate
