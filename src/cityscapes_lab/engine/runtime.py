"""Where and how tensors are computed: the device, the precision, the batch sizes, the memory layout and this
process's place among training processes, resolved once from the settings into one ``Runtime`` that every
training, prediction and labelling function takes."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..config import TrainConfig
from ..errors import ConfigError
from ..parallel import default_workers


def available_devices() -> list[str]:
    """The devices this machine can run on: ``cpu`` and every visible ``cuda:N`` (and ``mps`` on Apple)."""
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    mps = getattr(torch.backends, "mps", None)
    return found + (["mps"] if mps is not None and mps.is_available() else [])


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """``auto`` (cuda if there is one, else cpu) or a named device; ConfigError, naming ``option`` and the devices
    that exist, for one this machine does not have."""
    available = available_devices()
    if name == "auto":
        return torch.device("cuda" if "cuda:0" in available else "cpu")
    here = f"this machine has: {', '.join(available)}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{option} {name!r}: unknown device; choose auto, cpu, cuda or cuda:N ({here})") from None
    if device.type == "cuda":
        if "cuda:0" not in available:
            why = f"torch {torch.__version__} is a CPU build" if torch.version.cuda is None else "no GPU is visible"
            raise ConfigError(f"{option} {name}: this machine has no CUDA device ({why}); use cpu or auto ({here})")
        if device.index is not None and f"cuda:{device.index}" not in available:
            raise ConfigError(f"{option} {name}: there is no such CUDA device ({here})")
    elif device.type == "mps" and "mps" not in available:
        raise ConfigError(f"{option} {name}: this machine has no Apple GPU ({here})")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{option} {name!r}: cityscapes-lab runs on cpu, cuda or mps, not {device.type} ({here})")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on a GPU that supports it (fp16 with loss scaling otherwise), fp32 elsewhere.
    ConfigError for a precision the device cannot train in."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision fp16 needs a CUDA GPU (its loss scaling is a GPU feature); on {device.type} "
                          "use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision bf16: this GPU has no bfloat16 support; use fp16 or fp32")
    return precision


#: set by an executor that runs several tasks on one GPU: each process's share of it (local: 1/N; Ray: the
#: task's --gpus-per-task)
GPU_SHARE_ENV = "CITYSCAPES_LAB_GPU_SHARE"


def gpu_share() -> float:
    """This process's share of its GPU (``GPU_SHARE_ENV``); 1.0 when it has the device to itself."""
    try:
        share = float(os.environ.get(GPU_SHARE_ENV, "1"))
    except ValueError:
        return 1.0
    return share if 0 < share < 1 else 1.0


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` would name them to a child process: the
    parent's own list where it has one (indices or UUIDs), else the indices."""
    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    given = [name.strip() for name in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if name.strip()]
    return given[:count] if given else [str(index) for index in range(count)]


def worker_gpus(train_device: str) -> list[str]:
    """The GPUs local worker processes spread over: every visible one when there are several and
    ``train.device`` names none in particular (auto, cuda); else none (the workers share the one device)."""
    gpus = visible_gpus() if train_device in ("auto", "cuda") else []
    return gpus if len(gpus) > 1 else []


def worker_environments(parallel: int, gpus: list[str]) -> list[dict[str, str]]:
    """The environment of each of ``parallel`` local workers: over several GPUs, worker i on GPU i mod G (its
    ``CUDA_VISIBLE_DEVICES``, so that it sees that one as ``cuda``) with 1 / (the workers on it) of its memory;
    on one device (or the CPU), 1 / ``parallel`` each."""
    if not gpus:
        return [{GPU_SHARE_ENV: f"{1 / parallel:.6g}"} if parallel > 1 else {} for _ in range(parallel)]
    used = gpus[:parallel]
    sharing = [len(range(gpu, parallel, len(used))) for gpu in range(len(used))]
    environments = []
    for worker in range(parallel):
        gpu = worker % len(used)
        share = {GPU_SHARE_ENV: f"{1 / sharing[gpu]:.6g}"} if sharing[gpu] > 1 else {}
        environments.append({"CUDA_VISIBLE_DEVICES": used[gpu], **share})
    return environments


def claim_gpu_share(device: torch.device) -> None:
    """Cap this process's CUDA caching allocator at its share of the device's memory (less 5% for the processes'
    CUDA contexts, which lie outside the cap), so that a task that outgrows its share fails alone with an
    out-of-memory error instead of starving the tasks beside it. A no-op off CUDA or without a share."""
    share = gpu_share()
    if device.type == "cuda" and share < 1:
        # the call takes an index, not a plain "cuda" (which means the current device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(share * 0.95, index)


def cpu_threads(requested: int = 0, processes: int = 1) -> int:
    """Threads for torch on the CPU: ``requested``, or (0) this process's share of the cores it may use when
    ``processes`` training processes share them, so that our own processes never oversubscribe the machine.

    The count is not adapted to other programs' load, on purpose: on the CPU it changes the rounding of
    reductions (measured: the loss after 3 steps 4.0645 with 1 thread, 4.0957 with 2), so a load-dependent choice
    would make the same seed give other numbers, and a resumed training differ from an uninterrupted one.
    ``load_note`` says when other programs compete for the cores."""
    if requested:
        return requested
    return max(1, default_workers() // max(1, processes))


def load_note(threads: int) -> str | None:
    """A one-line note when other programs keep cores busy so that ``threads`` threads oversubscribe them (a
    parallel region waits for its slowest thread: measured twice as slow per step), else None."""
    busy, cores = busy_elsewhere(), default_workers()
    free = cores - busy
    if busy == 0 or threads <= free:
        return None
    return (f"other programs keep {busy} of {cores} cores busy, so {threads} training threads share them "
            f"and run slower; --set train.threads={max(1, free)} avoids that (the thread count changes the last "
            "digits of CPU results)")


def busy_elsewhere(samples: int = 5, interval: float = 0.01) -> int:
    """Cores kept busy by other processes: the runnable threads of the machine minus this process's own (the
    smallest of a few samples, so that a short burst does not count). 0 where /proc is not available."""
    try:
        counts = []
        for _ in range(samples):
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            ours = sum(1 for stat in Path("/proc/self/task").glob("*/stat")
                       if _state(stat) == "R")
            counts.append(max(0, running - ours))
            time.sleep(interval)
        return min(counts)
    except (OSError, ValueError, IndexError):
        return 0


def _state(stat: Path) -> str:
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


@dataclass(frozen=True)
class Runtime:
    """How a process computes: one object instead of device, precision and batch-size arguments."""

    device: torch.device
    precision: str = "fp32"  # resolved: fp32 | bf16 | fp16
    channels_last: bool = True
    batch_size: int = 32  # images per training step (the global batch: shared by the processes under DDP)
    eval_batch_size: int = 16  # images per forward pass when predicting (does not change results)
    rank: int = 0  # this process among ``world_size`` training processes (torchrun)
    world_size: int = 1
    device_data: bool = True  # a GPU may hold the training set (``sources.ArraySource``)
    # sliding windows of one shape share a forward pass (``inference.slide``); None: on a GPU only (on the CPU
    # it was 0.98x one window at a time, benchmarks/RESULTS.md "DeepLabV3+")
    batch_windows: bool | None = None

    @classmethod
    def from_config(cls, train: TrainConfig, device: torch.device | None = None, rank: int = 0,
                    world_size: int = 1) -> Runtime:
        """The runtime the settings describe (ConfigError for a device or precision this machine lacks); on a
        GPU shared with other tasks, this process takes only its share of the memory (``claim_gpu_share``)."""
        device = device if device is not None else resolve_device(train.device)
        claim_gpu_share(device)
        return cls(device, resolve_precision(train.precision, device), train.channels_last, train.batch_size,
                   train.eval_batch_size, rank, world_size, train.device_data)

    @classmethod
    def cpu(cls, **changes) -> Runtime:
        """fp32 on the CPU (tests, examples)."""
        return cls(torch.device("cpu"), **changes)

    def but(self, **changes) -> Runtime:
        """A copy with some fields changed, e.g. ``runtime.but(eval_batch_size=8)``."""
        return replace(self, **changes)

    @property
    def main(self) -> bool:
        """Whether this process writes files (the first of the training processes)."""
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes (losses and heads are computed in fp32 by their callers)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def loss_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs its loss scaled so that small gradients do not underflow; bf16 and fp32 do not."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None


def join_processes(train: TrainConfig) -> Runtime:
    """The runtime of this process; under torchrun (WORLD_SIZE > 1) it joins the process group first (NCCL on
    GPUs, gloo on CPUs), takes the GPU of its local rank, and on the CPU its share of the cores."""
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(train.device)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(train.threads, int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    if world_size == 1:
        return Runtime.from_config(train, device)
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime.from_config(train, device, dist.get_rank(), dist.get_world_size())
