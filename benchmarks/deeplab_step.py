"""One supervised training step of the semi-supervised benchmark's DeepLabV3+ (UniMatch's recipe: crop 801,
batch 8, SGD, OHEM), images per second and peak GPU memory, and the projected time of one supervised training
of 240 epochs on each published labeled subset (186 / 372 / 744 / 1488 images) and of one IM student (all 2975
train images) at that speed; beside it the validation that picks the best epoch: one val image of --val-size
predicted under UniMatch V1's windows (the rule of the cps-family numbers), seconds per image with the windows
of one shape sharing a forward pass (the default on a GPU) and one window at a time (the official code, the
default on the CPU), what 240 validations of the 500 val images take, and how many times faster per pixel the
network predicts than it trains (the figure `study --plan` assumes to be 3 where it is given --throughput).

    python benchmarks/deeplab_step.py [--device cuda] [--model deeplabv3plus_r50] [--crop 801] [--batch 8]
        [--steps 5] [--precision fp32,bf16] [--val-size 1024x2048] [--json FILE] [--no-record]

Random weights and images: the speed depends on shapes only. On the CPU use a small --crop to check the script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cityscapes_lab  # noqa: F401  (first: it sets THP_MEM_ALLOC_ENABLE before torch allocates)
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import benchmark_arguments, markdown_table, record, timed_steps  # noqa: E402

from cityscapes_lab.engine.losses import ohem_cross_entropy  # noqa: E402
from cityscapes_lab.engine.inference import predict_with  # noqa: E402
from cityscapes_lab.engine.prediction import protocol_for  # noqa: E402
from cityscapes_lab.engine.runtime import Runtime  # noqa: E402
from cityscapes_lab.memory import keep_freed_memory  # noqa: E402
from cityscapes_lab.models import build_model, model_spec  # noqa: E402

LABELED = {"1/16": 186, "1/8": 372, "1/4": 744, "1/2": 1488}
TRAIN = 2975
EPOCHS = 240
VAL = 500


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


def validation_speed(model_name: str, height: int, width: int, repeats: int, device: torch.device,
                     precision: str) -> tuple[float, float, int]:
    """(seconds to predict one height x width image under UniMatch V1's windows with the windows of one shape
    sharing a pass, the same one window at a time, the pixels its windows cover): each the median of ``repeats``
    after one untimed prediction, as a training's validation predicts each val image; one model for both."""
    torch.manual_seed(0)
    model = build_model(model_name, 19).to(device).to(memory_format=torch.channels_last).eval()
    rule = protocol_for(model_spec(model_name), "slide-unimatch-v1")
    image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    seconds = []
    for batch_windows in (True, False):
        runtime = Runtime(device, precision=precision, batch_windows=batch_windows)
        taken, _ = timed_steps(lambda: predict_with(model, image, rule, 19, runtime), repeats, device, warmup=1)
        seconds.append(taken)
    return seconds[0], seconds[1], rule.pixels(height, width)


def main() -> None:
    parser = benchmark_arguments(__doc__, device=True, json=True)
    parser.add_argument("--model", default="deeplabv3plus_r50")
    parser.add_argument("--crop", type=int, default=801)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", default=None, help="fp32,bf16 [default: both on cuda, fp32 on cpu]")
    parser.add_argument("--val-size", default="1024x2048", help="HEIGHTxWIDTH of a val image")
    args = parser.parse_args()
    device = torch.device(args.device)
    keep_freed_memory()  # as a training does (engine.train): a CPU forward pass otherwise page-faults its memory in
    val_height, val_width = (int(v) for v in args.val_size.lower().split("x"))
    rows, records = [], []
    for precision in (args.precision or ("fp32,bf16" if device.type == "cuda" else "fp32")).split(","):
        dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
        speed, peak = step_speed(args.model, args.crop, args.batch, args.steps, device, dtype)
        # full batches only, as the standard kind trains (engine.kinds.standard); an IM student (the study on the
        # standard protocol) trains on the labeled images plus every pseudo-labelled one: all 2975
        hours = {f: EPOCHS * (n // args.batch) * args.batch / speed / 3600 for f, n in LABELED.items()}
        hours["IM student"] = EPOCHS * (TRAIN // args.batch) * args.batch / speed / 3600
        projection = ", ".join(f"{f}: {h:.1f} h" for f, h in hours.items())
        per_image, one_at_a_time, pixels = validation_speed(args.model, val_height, val_width, args.steps, device,
                                                            precision)
        validations = EPOCHS * VAL * per_image / 3600
        speedup = pixels / per_image / (speed * args.crop * args.crop)
        rows.append([args.model, precision, f"{speed:.2f}", "-" if peak != peak else f"{peak:.2f}", projection,
                     f"{per_image:.3f}", f"{one_at_a_time:.3f}", f"{one_at_a_time / per_image:.2f}x",
                     f"{validations:.1f}", f"{speedup:.1f}x"])
        records.append({"what": f"{args.model} supervised step, crop {args.crop}, batch {args.batch}, {precision}",
                        "result": f"{speed:.2f} img/s, peak {peak:.2f} GiB; 240 epochs: {projection}"})
        records.append({"what": f"{args.model} validation, {val_height}x{val_width} under slide-unimatch-v1, "
                                f"{precision}",
                        "result": f"{per_image:.3f} s / image ({one_at_a_time:.3f} one window at a time, "
                                  f"{one_at_a_time / per_image:.2f}x); {EPOCHS} validations of {VAL}: "
                                  f"{validations:.1f} h; {speedup:.1f}x the training's speed per pixel"})
        print(f"{precision}: {speed:.2f} images/s; {projection}; validation {per_image:.3f} s / image "
              f"({one_at_a_time:.3f} one window at a time), {speedup:.1f}x per pixel", flush=True)
    table = markdown_table(["model", "precision", "images/s", "peak GPU GiB",
                            f"one training, {EPOCHS} epochs (projected): supervised per subset, IM student",
                            f"val s / image ({val_height}x{val_width}, slide-unimatch-v1)",
                            "one window at a time, s / image", "windows sharing a pass vs one at a time",
                            f"{EPOCHS} validations of {VAL} images, h", "predicting per pixel vs training"], rows)
    notes = [f"{device}; crop {args.crop}x{args.crop}, batch {args.batch}, SGD momentum 0.9, OHEM 0.7 / 200,000, "
             f"channels-last; median of {args.steps} steps after 2 warm-up steps; the projection counts training "
             "steps only; the validation column is the rest of a training (once per epoch, as UniMatch), from one "
             "random image, the windows of one shape sharing a forward pass as long as it holds at most the image's "
             "pixels (median of as many repeats as steps after one); beside it one window at a time, as the "
             "official code"]
    if args.json:
        args.json.write_text(json.dumps({"rows": records}))
    record(f"DeepLabV3+ supervised step ({device.type})", table, notes, save=not args.no_record)


if __name__ == "__main__":
    main()
