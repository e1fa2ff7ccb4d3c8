"""Inference time of the zoo models on one 1024x2048 image (whole-image protocol), with random weights (time
does not depend on them). On the CPU: seconds per image and peak memory. On a GPU: fp32 against bf16 autocast
with channels-last (and compiled), images per second and peak GPU memory.

    python benchmarks/zoo_inference.py [--models hrnet_w48_ocr,upernet_internimage_l] [--repeats 1]
                                       [--size 1024x2048] [--no-record]
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import benchmark_arguments, markdown_table, record, timed_steps  # noqa: E402

from cityscapes_lab.engine.runtime import Runtime  # noqa: E402
from cityscapes_lab.models import build_model  # noqa: E402

ZOO = ("hrnet_w48_ocr", "upernet_internimage_l", "upernet_internimage_xl")


def time_model(name: str, device: torch.device, precision: str, channels_last: bool, compiled: bool,
               repeats: int, batch: int = 1, size: tuple[int, int] = (1024, 2048)) -> tuple[float, float]:
    """(seconds per image, peak GPU GiB or NaN)."""
    torch.manual_seed(0)
    model = build_model(name, 19).to(device).eval()
    images = torch.rand(batch, 3, *size, device=device)
    if channels_last:
        model, images = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    def step() -> None:
        with torch.no_grad(), Runtime(device, precision).autocast():
            forward(images)

    seconds, peak = timed_steps(step, repeats, device, warmup=1)  # warm-up (and compilation)
    return seconds / batch, peak


def main() -> None:
    parser = benchmark_arguments(__doc__)
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--size", default="1024x2048", help="HEIGHTxWIDTH of the image")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    label = f"{size[0]}x{size[1]}"
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows, notes = [], []
    for name in args.models.split(","):
        seconds, _ = time_model(name, torch.device("cpu"), "fp32", True, False, args.repeats, size=size)
        rows.append([name, "cpu", "fp32, channels-last", f"{seconds:.1f}", f"{1 / seconds:.3f}", "-"])
        print(rows[-1], flush=True)
        if torch.cuda.is_available():
            for label, precision, channels_last, compiled in (("fp32", "fp32", False, False),
                                                              ("bf16 + channels-last", "bf16", True, False),
                                                              ("bf16 + channels-last, compiled", "bf16", True, True)):
                seconds, peak = time_model(name, torch.device("cuda"), precision, channels_last, compiled,
                                           max(5, args.repeats), size=size)
                rows.append([name, "cuda", label, f"{seconds:.3f}", f"{1 / seconds:.2f}", f"{peak:.2f}"])
                print(rows[-1], flush=True)
    notes.append(f"one {label} image, whole-image protocol, random weights, median of {args.repeats} after a "
                 f"warm-up; peak CPU memory of the process (all models): "
                 f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB.")
    notes.append("multi-scale + flip (scales 0.5-1.75, each with its flip) sees 2 x sum(scale^2) = 17.4 times the "
                 "pixels of the whole-image protocol, so expect roughly 17x these times (computed, not measured).")
    record(f"zoo_inference: seconds per {label} image",
           markdown_table(["model", "device", "precision", "s / image", "images / s", "peak GPU GiB"], rows), notes,
           save=not args.no_record)


if __name__ == "__main__":
    main()
