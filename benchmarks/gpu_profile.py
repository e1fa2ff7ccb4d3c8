"""Where one study training's step time goes: the engine's training loop (the study's U-Net, 416x208, AdamW,
precision auto) timed alone, then profiled, at a few batch sizes.

Per row: images/s, wall ms per step, GPU kernel ms per step, the share of the step the GPU is busy, kernels per
step, and the kernels that take the most time. A busy share well under 100% means the step waits for the CPU
(kernel launches, Python): concurrent trainings or CUDA graphs can fill the gaps. A share near 100% means the
GPU itself is the limit: only less work per image (precision, fused kernels) makes a training faster. On the CPU
(a rehearsal) there are no kernel figures.

    python benchmarks/gpu_profile.py [--device cuda] [--batches 32,64] [--steps 20] [--json FILE] [--no-record]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import cityscapes_lab  # noqa: F401  (first, as training does: it sets the allocator's environment)
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import benchmark_arguments, markdown_table, record  # noqa: E402

from cityscapes_lab.config import TrainConfig  # noqa: E402
from cityscapes_lab.engine.runtime import Runtime  # noqa: E402
from cityscapes_lab.engine.sources import ArraySource  # noqa: E402
from cityscapes_lab.engine.steps import CrossEntropy  # noqa: E402
from cityscapes_lab.engine.train import Phase, Training, Validation, train  # noqa: E402
from cityscapes_lab.models.registry import training_model  # noqa: E402

CLASSES, HEIGHT, WIDTH = 35, 208, 416  # the paper protocol


def epoch_runner(config: TrainConfig, steps: int):
    """A function that runs one epoch of ``steps`` steps of ``config``'s training on random images (one model
    throughout) and returns its seconds."""
    runtime = Runtime.from_config(config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (config.batch_size * 4, HEIGHT, WIDTH, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, (config.batch_size * 4, HEIGHT, WIDTH), dtype=np.uint8)
    torch.manual_seed(0)
    model, _ = training_model(config, CLASSES)
    source = ArraySource(images, labels)
    one = dataclasses.replace(config, epochs=1, steps_per_epoch=steps)
    training = Training((Phase(source, CrossEntropy(None), 0, steps),), Validation(lambda m: {"x": 0.0}, "x"), 1,
                        keras_epsilon=True)

    def run() -> float:
        with tempfile.TemporaryDirectory() as folder:
            result = train(model, training, one, runtime, checkpoint=Path(folder) / "p.pt", show_progress=False)
        return result.history[-1]["seconds"]

    return run


def kernels_of(profile) -> list[tuple[str, float]]:
    """(name, microseconds) of the profile's GPU kernels (not copies or memsets)."""
    return [(event.name, event.time_range.elapsed_us()) for event in profile.events()
            if event.device_type == torch.autograd.DeviceType.CUDA
            and not event.name.startswith(("Memcpy", "Memset"))]


def kernel_summary(kernels: list[tuple[str, float]], steps: int, step_ms: float) -> dict:
    """Kernel ms per step, the share of the wall time ``step_ms`` the GPU is busy (one stream: kernels do not
    overlap), kernels per step, and the three names that take the most kernel time with their shares."""
    per_name = Counter()
    for name, us in kernels:
        per_name[name] += us
    total = sum(per_name.values())
    busy_ms = total / 1000 / steps
    return {"busy_ms": busy_ms, "busy": min(1.0, busy_ms / step_ms), "per_step": len(kernels) / steps,
            "top": [(name, us / total) for name, us in per_name.most_common(3)]}


def measure(batch: int, steps: int, device: str) -> list:
    config = TrainConfig(device=device, batch_size=batch, precision="auto")
    run = epoch_runner(config, steps)
    run()  # warm-up: cuDNN's choice of algorithms, the allocator, device_data's decision
    seconds = run()
    cuda = device.startswith("cuda")
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as profile:
        run()
    step_ms = seconds / steps * 1000
    kernels = kernels_of(profile) if cuda else []
    row = [batch, f"{batch * steps / seconds:.1f}", f"{step_ms:.2f}"]
    if not kernels:
        return row + ["-", "-", "-", "-"]
    found = kernel_summary(kernels, steps, step_ms)
    return row + [f"{found['busy_ms']:.2f}", f"{found['busy']:.0%}", f"{found['per_step']:.0f}",
                  "; ".join(f"{name[:60]} {share:.0%}" for name, share in found["top"])]


def main() -> None:
    parser = benchmark_arguments(__doc__, device=True, json=True)
    parser.add_argument("--batches", default="32,64")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    rows, records = [], []
    for batch in (int(b) for b in args.batches.split(",")):
        row = measure(batch, args.steps, args.device)
        print(row, flush=True)
        rows.append(row)
        records.append({"what": f"one training alone, batch {batch}",
                        "result": f"{row[1]} images/s, {row[2]} ms per step, GPU kernels {row[3]} ms per step "
                                  f"(busy {row[4]}), {row[5]} kernels per step; top: {row[6]}"})
    header = ["batch", "images/s", "wall ms per step", "GPU kernel ms per step", "GPU busy", "kernels per step",
              "top kernels (share of kernel time)"]
    notes = [f"the engine's training loop (train.train) on {args.device}: unet_paper, {WIDTH}x{HEIGHT}, "
             f"{CLASSES} classes, AdamW, precision auto, channels-last, device_data on; one epoch of {args.steps} "
             "steps after one of warm-up; timed without the profiler, then profiled (kernel times from "
             "torch.profiler; busy = kernel time / wall time)"]
    table = markdown_table(header, rows)
    if args.json:
        args.json.write_text(json.dumps({"rows": records, "notes": notes}))
    record(f"gpu_profile: where a training step's time goes ({args.device})", table, notes,
           save=not args.no_record)


if __name__ == "__main__":
    main()
