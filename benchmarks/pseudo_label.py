"""Pseudo-labelling speed: n = 2, 3, 4 teachers (the study's U-Net) label 416x208 images with the IM rule and
with soft voting, in batches from memory. Images per second, on the CPU (and the GPU when there is one).

    python benchmarks/pseudo_label.py [--images 64 --batch 8] [--no-record]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from results import benchmark_arguments, markdown_table, record  # noqa: E402

from cityscapes_lab.engine.runtime import Runtime  # noqa: E402
from cityscapes_lab.models import build_model  # noqa: E402
from cityscapes_lab.semisup.pseudo import LabelingRule, label_batch  # noqa: E402


def main() -> None:
    parser = benchmark_arguments(__doc__)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 208, 416, 3), dtype=np.uint8)
    ids = [f"aachen_{i:06d}_000019" for i in range(args.images)]
    rows = []
    for device in devices:
        for precision in (["fp32", "bf16"] if device.type == "cpu" else ["bf16"]):
            for n in (2, 3, 4):
                torch.manual_seed(0)
                models = [build_model("unet_paper", 35).to(device).to(memory_format=torch.channels_last).eval()
                          for _ in range(n)]
                runtime = Runtime(device, precision, channels_last=True)
                for kind in ("im", "ensemble"):
                    rule = LabelingRule(kind)
                    label_batch(models, images[:args.batch], ids[:args.batch], rule, runtime, 0)  # warm-up
                    start = time.perf_counter()
                    for s in range(0, args.images, args.batch):
                        label_batch(models, images[s:s + args.batch], ids[s:s + args.batch], rule, runtime, 0)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    speed = args.images / (time.perf_counter() - start)
                    rows.append([device.type, precision, n, kind, f"{speed:.1f}", f"{speed * n:.1f}"])
                    print(rows[-1], flush=True)
    record("pseudo_label: teachers labelling 416x208 images",
           markdown_table(["device", "precision", "teachers n", "rule", "images/s", "teacher passes/s"], rows),
           [f"{args.images} images in batches of {args.batch}, the study's U-Net (alpha 1) as every teacher; "
            "'im' = n argmax maps + the IM rule (mask, blacked-out input); 'ensemble' = mean softmax + argmax."],
           save=not args.no_record)


if __name__ == "__main__":
    main()
