"""One supervised training step of the semi-supervised benchmark's DeepLabV3+ (UniMatch's recipe: crop 801,
batch 8, SGD, OHEM), images per second and peak GPU memory, and the projected time of one supervised training
of 240 epochs on each published labeled subset (186 / 372 / 744 / 1488 images) and of one IM student (all 2975
train images) at that speed.

    python benchmarks/deeplab_step.py [--device cuda] [--model deeplabv3plus_r50] [--crop 801] [--batch 8]
        [--steps 5] [--precision fp32,bf16] [--json FILE] [--no-record]

Random weights and images: the speed depends on shapes only. On the CPU use a small --crop to check the script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cityscapes_lab  # noqa: F401  (first: it sets THP_MEM_ALLOC_ENABLE before torch allocates)
import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import benchmark_arguments, markdown_table, record, timed_steps  # noqa: E402

from cityscapes_lab.engine.losses import ohem_cross_entropy  # noqa: E402
from cityscapes_lab.models import build_model  # noqa: E402

LABELED = {"1/16": 186, "1/8": 372, "1/4": 744, "1/2": 1488}
TRAIN = 2975
EPOCHS = 240


def step_speed(model_name: str, crop: int, batch: int, steps: int, device: torch.device,
               dtype: torch.dtype | None) -> tuple[float, float]:
    """(images/s, peak GPU memory GiB or NaN) of full SGD + OHEM training steps, median of ``steps``."""
    torch.manual_seed(0)
    model = build_model(model_name, 19).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)
    images = torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 19, (batch, crop, crop), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images)
        loss = ohem_cross_entropy(logits, labels, 255, 0.7, 200_000)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds, peak = timed_steps(step, steps, device)
    return batch / seconds, peak


def main() -> None:
    parser = benchmark_arguments(__doc__, device=True, json=True)
    parser.add_argument("--model", default="deeplabv3plus_r50")
    parser.add_argument("--crop", type=int, default=801)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", default=None, help="fp32,bf16 [default: both on cuda, fp32 on cpu]")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows, records = [], []
    for precision in (args.precision or ("fp32,bf16" if device.type == "cuda" else "fp32")).split(","):
        dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
        speed, peak = step_speed(args.model, args.crop, args.batch, args.steps, device, dtype)
        # full batches only, as the standard kind trains (engine.kinds.standard); an IM student (the study on the
        # standard protocol) trains on the labeled images plus every pseudo-labelled one: all 2975
        hours = {f: EPOCHS * (n // args.batch) * args.batch / speed / 3600 for f, n in LABELED.items()}
        hours["IM student"] = EPOCHS * (TRAIN // args.batch) * args.batch / speed / 3600
        projection = ", ".join(f"{f}: {h:.1f} h" for f, h in hours.items())
        rows.append([args.model, precision, f"{speed:.2f}", "-" if peak != peak else f"{peak:.2f}", projection])
        records.append({"what": f"{args.model} supervised step, crop {args.crop}, batch {args.batch}, {precision}",
                        "result": f"{speed:.2f} img/s, peak {peak:.2f} GiB; 240 epochs: {projection}"})
        print(f"{precision}: {speed:.2f} images/s; {projection}", flush=True)
    table = markdown_table(["model", "precision", "images/s", "peak GPU GiB",
                            f"one training, {EPOCHS} epochs (projected): supervised per subset, IM student"], rows)
    notes = [f"{device}; crop {args.crop}x{args.crop}, batch {args.batch}, SGD momentum 0.9, OHEM 0.7 / 200,000, "
             f"channels-last; median of {args.steps} steps after 2 warm-up steps; the projection counts training "
             "steps only (no validation)"]
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": records}))
    record(f"DeepLabV3+ supervised step ({device.type})", table, notes, save=not args.no_record)


if __name__ == "__main__":
    main()
