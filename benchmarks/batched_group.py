"""A whole group of the study's U-Nets trained as one batched model: an experiment (issue "The whole study at
full scale"), not a feature.

A group of the study is K U-Nets of one recipe, each with its own initialisation and data order. Stacked as one
network whose every convolution is grouped (``groups=K``: model k's channels only see model k's channels) and
whose BatchNorms have K x C channels, one forward/backward pass trains all K at once: the skips are added, not
concatenated, so every operation of this U-Net is per channel or per group. AdamW is elementwise, so one
optimizer over the stacked tensors updates each model exactly as its own would. What changes is the kernel
count: one grouped kernel instead of K small ones, which matters where a 0.7 M-parameter U-Net leaves a GPU idle.

The script checks first that the stacked network gives each model's own logits and loss (printed: the largest
difference), then measures images per second of K separate training steps one after another against one step
of the stacked group, side by side, for each K, and appends the table to RESULTS.md:

    python benchmarks/batched_group.py [--device cpu|cuda] [--groups 1,2,4,8] [--batch 32] [--steps 5]
        [--precision fp32,bf16] [--json FILE] [--no-record]
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import cityscapes_lab  # noqa: F401  (first: it sets THP_MEM_ALLOC_ENABLE before torch allocates)
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from results import benchmark_arguments, markdown_table, record, timed_steps  # noqa: E402

from cityscapes_lab.engine.losses import pixel_cross_entropy  # noqa: E402
from cityscapes_lab.engine.optim import DecoupledAdamW  # noqa: E402
from cityscapes_lab.models import build_model  # noqa: E402

SIZE = (208, 416)
CLASSES = 35


def stack_models(models: list[nn.Module]) -> nn.Module:
    """One network that computes every model of ``models`` (the same architecture) side by side: convolutions
    grouped K ways, BatchNorms over the K models' channels, weights and statistics copied from the models."""
    stacked = copy.deepcopy(models[0])
    parts = [dict(m.named_modules()) for m in models]
    k = len(models)
    for name, module in list(stacked.named_modules()):
        same = [p[name] for p in parts]
        # built where the models are (a new module is on the CPU by default)
        where = {"device": module.weight.device, "dtype": module.weight.dtype} if hasattr(module, "weight") else {}
        if isinstance(module, nn.Conv2d):
            new = nn.Conv2d(k * module.in_channels, k * module.out_channels, module.kernel_size,
                            module.stride, module.padding, module.dilation, k * module.groups, module.bias is not None,
                            **where)
            new.weight.data.copy_(torch.cat([m.weight.data for m in same]))
            if module.bias is not None:
                new.bias.data.copy_(torch.cat([m.bias.data for m in same]))
        elif isinstance(module, nn.BatchNorm2d):
            new = type(module)(k * module.num_features, module.eps, module.momentum, **where)
            for tensor in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, tensor).data.copy_(torch.cat([getattr(m, tensor).data for m in same]))
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(stacked.get_submodule(parent) if parent else stacked, child, new)
    return stacked


def stacked_input(images: torch.Tensor) -> torch.Tensor:
    """(K, B, 3, H, W) -> (B, K*3, H, W): model k's batch in channels 3k..3k+2."""
    k, b, c, h, w = images.shape
    return images.transpose(0, 1).reshape(b, k * c, h, w)


def stacked_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The sum over the K models of each one's mean cross-entropy; logits (B, K*C, H, W), targets (K, B, H, W)."""
    k, b, h, w = targets.shape
    per_model = logits.float().view(b, k, -1, h, w).transpose(0, 1).reshape(k * b, -1, h, w)
    return pixel_cross_entropy(per_model, targets.reshape(k * b, h, w)) * k  # equal batches: sum of the means


def make_group(k: int, batch: int, device: torch.device, channels_last: bool):
    models = []
    for member in range(k):
        torch.manual_seed(member)
        model = build_model("unet_paper", CLASSES).to(device)
        models.append(model.to(memory_format=torch.channels_last) if channels_last else model)
    generator = torch.Generator().manual_seed(1234)
    images = torch.randint(0, 256, (k, batch, 3, *SIZE), dtype=torch.uint8, generator=generator).to(device)
    targets = torch.randint(0, CLASSES, (k, batch, *SIZE), generator=generator).to(device)
    return models, images, targets


def check_equal(device: torch.device) -> float:
    """The largest |difference| between the stacked network's logits and each model's own (training mode)."""
    models, images, _ = make_group(3, 2, device, False)
    stacked = stack_models(models)
    with torch.no_grad():
        together = stacked(stacked_input(images)).view(2, 3, CLASSES, *SIZE)
        return max((together[:, m] - models[m](images[m])).abs().max().item() for m in range(3))


def measure(k: int, batch: int, steps: int, device: torch.device, dtype: torch.dtype | None) -> tuple[float, float]:
    """(images/s of K separate steps one after another, images/s of one stacked step)."""
    channels_last = True
    models, images, targets = make_group(k, batch, device, channels_last)
    optimizers = [DecoupledAdamW(m.parameters(), lr=0.003, decay=1e-4) for m in models]

    def train(model, optimizer, x, y, loss_fn) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def separate() -> None:
        for m in range(k):
            train(models[m], optimizers[m], images[m], targets[m], pixel_cross_entropy)

    stacked = stack_models(models)
    if channels_last:
        stacked = stacked.to(memory_format=torch.channels_last)
    together_x = stacked_input(images).contiguous(memory_format=torch.channels_last)
    optimizer = DecoupledAdamW(stacked.parameters(), lr=0.003, decay=1e-4)
    one, _ = timed_steps(separate, steps, device)
    many, _ = timed_steps(lambda: train(stacked, optimizer, together_x, targets, stacked_loss), steps, device)
    return k * batch / one, k * batch / many


def main() -> None:
    parser = benchmark_arguments(__doc__, device=True, json=True)
    parser.add_argument("--groups", default="1,2,4,8")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", default=None, help="fp32,bf16 [default: fp32 on cpu, fp32,bf16 on cuda]")
    args = parser.parse_args()
    device = torch.device(args.device)
    precisions = (args.precision or ("fp32,bf16" if device.type == "cuda" else "fp32")).split(",")
    difference = check_equal(device)
    print(f"stacked vs separate logits: largest difference {difference:.2e}", flush=True)
    rows, records = [], []
    for precision in precisions:
        dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
        for k in (int(g) for g in args.groups.split(",")):
            separate, stacked = measure(k, args.batch, args.steps, device, dtype)
            print(f"K={k} {precision}: separate {separate:.1f} images/s, stacked {stacked:.1f}", flush=True)
            rows.append([k, precision, f"{separate:.1f}", f"{stacked:.1f}", f"{stacked / separate:.2f}x"])
            records.append({"what": f"group of {k} U-Nets, batch {args.batch} each, {precision}",
                            "result": f"separate {separate:.1f} img/s, stacked {stacked:.1f} img/s "
                                      f"({stacked / separate:.2f}x)"})
    table = markdown_table(["models K", "precision", "separate steps, images/s", "one stacked step, images/s",
                            "ratio"], rows)
    notes = [f"device {device}; each model batch {args.batch} at 416x208, 35 classes, AdamW; channels-last; "
             f"median of {args.steps} steps after 2 warm-up steps",
             f"the stacked network gives each model's own logits: largest difference {difference:.1e}",
             "images/s counts the images of all K models; trainings/h scale with it"]
    if args.json:
        args.json.write_text(json.dumps({"rows": records}))
    record(f"One group of U-Nets as one stacked model ({device.type})", table, notes, save=not args.no_record)
    if difference > 1e-3:
        sys.exit("the stacked network does not compute the separate models: the figures are not comparable")


if __name__ == "__main__":
    main()
