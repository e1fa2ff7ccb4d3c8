"""A training set held on the GPU (``train.device_data``) gives the batches that copying each one from the host
gives: the same values, types and memory layout. On the CPU the device copy is forced to check the gathering;
the CUDA test runs it on a GPU."""

import numpy as np
import pytest
import torch

from cityscapes_lab.config import TrainConfig
from cityscapes_lab.data.rows import RowArray
from cityscapes_lab.engine import sources
from cityscapes_lab.engine.runtime import Runtime
from cityscapes_lab.engine.sources import ArraySource, gather, holds_on_device, to_batch, to_device

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (10, 4, 6, 3), dtype=np.uint8)
LABELS = RNG.integers(0, 35, (10, 4, 6), dtype=np.uint8)
INDICES = np.array([7, 2, 2, 9, 0])


def same(a: tuple, b: tuple) -> None:
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride() and x.device == y.device
        assert torch.equal(x, y)


@pytest.mark.parametrize("channels_last", [True, False])
def test_gathering_a_device_copy_gives_the_batch_copied_from_the_host(channels_last):
    runtime = Runtime.cpu(channels_last=channels_last)
    copy = to_device(IMAGES, runtime.device, rows=3), to_device(LABELS, runtime.device, rows=3)
    same(gather(*copy, INDICES, runtime), to_batch(IMAGES, LABELS, INDICES, runtime))


def test_a_lazily_read_set_is_copied_a_few_rows_at_a_time(tmp_path):
    np.save(tmp_path / "images.npy", IMAGES)
    lazy = RowArray(tmp_path / "images.npy", np.array([9, 1, 4, 4, 0]))
    copied = to_device(lazy, torch.device("cpu"), rows=2)
    assert copied.dtype == torch.uint8 and np.array_equal(copied.numpy(), IMAGES[[9, 1, 4, 4, 0]])


def test_only_a_gpu_with_room_for_the_set_holds_it(monkeypatch):
    set_bytes = IMAGES.nbytes + LABELS.nbytes
    monkeypatch.setattr(sources, "device_memory", lambda device: 10 * set_bytes)
    monkeypatch.setattr(sources, "reserved_memory", lambda device: 8 * set_bytes)  # half the rest: just fits
    gpu = Runtime(torch.device("cuda"))  # a description only: nothing runs on it
    assert holds_on_device(IMAGES, LABELS, gpu)
    assert not holds_on_device(IMAGES, LABELS, Runtime.cpu())  # on the CPU the arrays are where they are used
    assert not holds_on_device(IMAGES, LABELS, gpu.but(device_data=False))
    monkeypatch.setattr(sources, "reserved_memory", lambda device: 8 * set_bytes + 1)  # the network needs more
    assert not holds_on_device(IMAGES, LABELS, gpu)
    assert Runtime.from_config(TrainConfig(device="cpu", device_data=False)).device_data is False


def test_after_the_first_batch_the_source_copies_the_set_once_and_gathers_the_rest_from_it(monkeypatch):
    copies, asked = [], []
    monkeypatch.setattr(sources, "holds_on_device", lambda images, labels, runtime: asked.append(len(copies)) or True)
    monkeypatch.setattr(sources, "to_device", lambda array, device: copies.append(len(array)) or torch.from_numpy(
        np.array(array)))
    source, runtime = ArraySource(IMAGES, LABELS), Runtime.cpu()
    for step in range(3):
        indices = (INDICES + step) % len(IMAGES)
        same(source.batch(indices, step, runtime), to_batch(IMAGES, LABELS, indices, runtime))
    assert asked == [0] and copies == [10, 10]  # asked once, at the second batch; images and labels, once


@pytest.mark.gpu
def test_on_a_gpu_the_held_set_gives_the_batches_copied_from_the_host():
    runtime = Runtime(torch.device("cuda"))
    source = ArraySource(IMAGES, LABELS)
    for step in range(3):
        same(source.batch(INDICES, step, runtime), to_batch(IMAGES, LABELS, INDICES, runtime))
    assert source._on_device is not None and source._on_device[0].is_cuda
    host = ArraySource(IMAGES, LABELS)
    for step in range(3):
        same(host.batch(INDICES, step, runtime.but(device_data=False)), to_batch(IMAGES, LABELS, INDICES, runtime))
    assert host._on_device is None
