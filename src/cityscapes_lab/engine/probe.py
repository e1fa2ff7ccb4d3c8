"""How fast one training runs here: a short probe of the training loop at the study's batch and image size."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..models.registry import training_model
from .runtime import Runtime, cpu_threads
from .sources import ArraySource
from .steps import CrossEntropy
from .train import Phase, Training, Validation, train


def probe_throughput(config: TrainConfig, height: int, width: int, num_classes: int, steps: int = 2,
                     processes: int = 1) -> float:
    """Images per second of ``config``'s training on random images: two epochs of ``steps`` steps, the second
    one timed (the first pays for warm-up and compilation)."""
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
    return steps * config.batch_size / result.history[-1]["seconds"]
