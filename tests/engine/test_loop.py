"""The study's data order, and training that diverges."""

import numpy as np
import pytest
import torch

from cityscapes_lab.config import TrainConfig
from cityscapes_lab.data.prepared import SplitArrays
from cityscapes_lab.engine import kinds
from cityscapes_lab.engine.runtime import Runtime
from cityscapes_lab.engine.sources import BatchStream
from cityscapes_lab.engine.train import TrainingDiverged, train
from cityscapes_lab.models import build_model


def test_stream_passes_over_every_image_and_keeps_the_short_batch():
    stream = BatchStream(10, 4, seed=1)
    first_pass = [stream.batch(step) for step in range(3)]
    assert [len(b) for b in first_pass] == [4, 4, 2]
    assert sorted(np.concatenate(first_pass).tolist()) == list(range(10))
    second_pass = np.concatenate([stream.batch(step) for step in range(3, 6)])
    assert sorted(second_pass.tolist()) == list(range(10))
    assert not np.array_equal(np.concatenate(first_pass), second_pass)  # reshuffled every pass


def test_stream_with_drop_last_gives_only_full_batches():
    """The standard protocol's order: a short last batch is left out, so that no process of a DDP training gets
    a batch of one image (BatchNorm cannot train on it)."""
    stream = BatchStream(10, 4, seed=1, drop_last=True)
    batches = [stream.batch(step) for step in range(6)]
    assert [len(b) for b in batches] == [4] * 6
    assert len(set(np.concatenate(batches[:2]).tolist())) == 8  # a pass: 2 batches of distinct images
    assert BatchStream(3, 4, seed=0, drop_last=True).batch(0).tolist() != []  # a set smaller than a batch: all


def test_stream_is_a_pure_function_of_seed_and_step():
    a, b = BatchStream(50, 8, seed=3), BatchStream(50, 8, seed=3)
    forward = [a.batch(s).tolist() for s in range(20)]
    backward = [b.batch(s).tolist() for s in reversed(range(20))][::-1]
    assert forward == backward
    assert BatchStream(50, 8, seed=4).batch(0).tolist() != forward[0]


def test_a_diverging_training_raises(tmp_path):
    rng = np.random.default_rng(0)
    data = SplitArrays("t", ["a", "b"], rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, 5, (2, 32, 32), dtype=np.uint8))
    torch.manual_seed(0)
    model = build_model("unet_paper", num_classes=5)
    config = TrainConfig(epochs=3, batch_size=2, lr=1e30)
    runtime = Runtime.from_config(config, torch.device("cpu"))
    training = kinds.study(model, data, data, config, runtime, seed=0, num_classes=5, ignore_index=None,
                           protocol="paper")
    with pytest.raises(TrainingDiverged, match="loss became"):
        train(model, training, config, runtime, checkpoint=tmp_path / "last.pt", show_progress=False)
