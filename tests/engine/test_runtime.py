"""A process's share of a GPU that several tasks use at once: read from the executor's variable, claimed as a
cap on the CUDA caching allocator."""

import pytest
import torch

from cityscapes_lab.engine.runtime import GPU_SHARE_ENV, claim_gpu_share, gpu_share


@pytest.mark.parametrize("value,share", [(None, 1.0), ("0.25", 0.25), ("0.5", 0.5), ("1", 1.0), ("2", 1.0),
                                         ("0", 1.0), ("-0.5", 1.0), ("half", 1.0)])
def test_the_share_is_the_executors_fraction_or_the_whole_device(monkeypatch, value, share):
    if value is None:
        monkeypatch.delenv(GPU_SHARE_ENV, raising=False)
    else:
        monkeypatch.setenv(GPU_SHARE_ENV, value)
    assert gpu_share() == share


def test_a_share_caps_the_allocator_on_cuda_only(monkeypatch):
    from torch.cuda._utils import _get_device_index

    calls = []
    # the real call's own check of its device argument (a plain "cuda" raises there: found on an H200)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda f, d: calls.append((f, _get_device_index(d))))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv(GPU_SHARE_ENV, "0.25")
    claim_gpu_share(torch.device("cpu"))
    assert calls == []
    claim_gpu_share(torch.device("cuda", 1))
    assert calls == [(pytest.approx(0.25 * 0.95), 1)]  # 5% left for the CUDA contexts
    claim_gpu_share(torch.device("cuda"))  # what train.device=cuda gives: the current device
    assert calls[1] == (pytest.approx(0.25 * 0.95), 0)
    monkeypatch.delenv(GPU_SHARE_ENV)
    claim_gpu_share(torch.device("cuda"))
    assert len(calls) == 2  # alone on the device: no cap


@pytest.mark.gpu
def test_a_process_that_outgrows_its_share_gets_an_out_of_memory_error(monkeypatch):
    from cityscapes_lab.config import TrainConfig
    from cityscapes_lab.engine.runtime import Runtime

    total = torch.cuda.get_device_properties(0).total_memory
    monkeypatch.setenv(GPU_SHARE_ENV, "0.02")
    try:
        runtime = Runtime.from_config(TrainConfig(device="cuda"))
        small = torch.empty(int(total * 0.01), dtype=torch.uint8, device=runtime.device)
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(int(total * 0.03), dtype=torch.uint8, device=runtime.device)
        del small
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


def test_local_workers_spread_over_several_gpus_and_share_each():
    from cityscapes_lab.engine.runtime import worker_environments

    # one device (or the CPU): every worker takes 1/N of it
    assert worker_environments(3, []) == [{GPU_SHARE_ENV: "0.333333"}] * 3
    assert worker_environments(1, []) == [{}]
    # 5 workers on 2 GPUs: round-robin, 3 share the first and 2 the second
    assert worker_environments(5, ["0", "1"]) == [
        {"CUDA_VISIBLE_DEVICES": "0", GPU_SHARE_ENV: "0.333333"}, {"CUDA_VISIBLE_DEVICES": "1", GPU_SHARE_ENV: "0.5"},
        {"CUDA_VISIBLE_DEVICES": "0", GPU_SHARE_ENV: "0.333333"}, {"CUDA_VISIBLE_DEVICES": "1", GPU_SHARE_ENV: "0.5"},
        {"CUDA_VISIBLE_DEVICES": "0", GPU_SHARE_ENV: "0.333333"}]
    # fewer workers than GPUs: one GPU each, all of it
    assert worker_environments(2, ["3", "5", "7"]) == [{"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "5"}]


def test_the_gpus_to_spread_over_are_the_visible_ones_when_the_device_names_none(monkeypatch):
    from cityscapes_lab.engine import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert runtime.worker_gpus("auto") == runtime.worker_gpus("cuda") == ["0", "1", "2", "3"]
    assert runtime.worker_gpus("cuda:2") == [] and runtime.worker_gpus("cpu") == []  # the setting names a device
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a1, GPU-b2")  # the parent's own list, as its children see it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.worker_gpus("auto") == ["GPU-a1", "GPU-b2"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert runtime.worker_gpus("auto") == []  # one GPU: all workers share it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.worker_gpus("auto") == []
