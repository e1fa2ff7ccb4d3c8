"""Training step of the study's U-Net (batch 32, 416x208, 35 classes, AdamW): images per second.

Side by side in one run: the study's original code (the peer, below), a plain PyTorch port (NCHW,
F.cross_entropy), cityscapes-lab's step (channels-last end to end, the blocked cross-entropy), compiled, and with
bf16 autocast; on a GPU, bf16 and peak GPU memory. ``--rounds`` repeats the whole set, alternating the order,
and every row is the median of its rounds (each round: the median of ``--steps`` steps after 2 warm-up steps;
each variant in a fresh process, as the peer).
Both sides use the same number of threads: PyTorch's intra-op threads = the CPUs of this process, passed to the
peer as TensorFlow's intra-op threads. --memory also measures the peak memory of whole paper-protocol trainings
at the study's sizes.

The peer is the study's own code run as it is (benchmarks/keras_peer.py): the original repository's
``unet.get_unet`` and ``functions.train_multiclass`` (Keras 2, tensorflow-addons AdamW, CategoricalCrossentropy,
its metrics and tf.data pipeline), in its own Python environment. Set it up once:

    git clone https://github.com/MichaelVorndran/InconsistencyMasks /work/peer/InconsistencyMasks
    python3.11 -m venv .venv-peer && .venv-peer/bin/pip install -r requirements-peer.txt

(tensorflow-addons supports TensorFlow <= 2.15, which needs Python 3.9-3.11), then

    python benchmarks/train_step.py [--steps 5] [--rounds 3] [--alphas 1]
        [--keras-python .venv-peer/bin/python --original /work/peer/InconsistencyMasks] [--memory]
        [--variants fp32,bf16,...] [--no-record]

``--original`` defaults to the environment variable IM_ORIGINAL.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import cityscapes_lab  # noqa: F401  (first: it sets THP_MEM_ALLOC_ENABLE, which PyTorch reads once, as training does)
import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from results import benchmark_arguments, markdown_table, record, timed_steps  # noqa: E402

from cityscapes_lab.engine.losses import pixel_cross_entropy  # noqa: E402
from cityscapes_lab.engine.optim import DecoupledAdamW  # noqa: E402
from cityscapes_lab.memory import keep_freed_memory  # noqa: E402
from cityscapes_lab.models import build_model  # noqa: E402

# name -> (channels_last, our loss, torch.compile mode or None, autocast dtype, keep freed memory as training
# does: memory.py)
VARIANTS = {
    "plain PyTorch port (NCHW, F.cross_entropy)": (False, False, None, None, False),
    "cityscapes-lab, fp32, glibc's default malloc (before memory.py)": (True, True, None, None, False),
    "cityscapes-lab, fp32 (channels-last, blocked loss)": (True, True, None, None, True),
    "cityscapes-lab, fp32, torch.compile": (True, True, "default", None, True),
    "cityscapes-lab, bf16 autocast (opt-in)": (True, True, None, torch.bfloat16, True),
    "cityscapes-lab, bf16 autocast, torch.compile": (True, True, "default", torch.bfloat16, True),
    # CUDA graphs replay the step's kernels without launching each from Python: what a tiny model on a large GPU
    # may be waiting for (on the CPU the mode is the default one, so the row is left out there)
    "cityscapes-lab, bf16 autocast, torch.compile with CUDA graphs (reduce-overhead)":
        (True, True, "reduce-overhead", torch.bfloat16, True),
}
#: --variants: short ids of the rows above, in their order
VARIANT_IDS = dict(zip(("plain", "fp32-malloc", "fp32", "fp32-compile", "bf16", "bf16-compile", "bf16-graphs"),
                       VARIANTS))


def step_speed(alpha: float, batch: int, steps: int, device: torch.device, channels_last: bool, our_loss: bool,
               compiled: str | None, dtype: torch.dtype | None, keep_memory: bool) -> tuple[float, float]:
    """(images per second, peak GPU memory in GiB or NaN) of full training steps, median of ``steps``."""
    if keep_memory:
        keep_freed_memory()
    torch.manual_seed(0)
    model = build_model("unet_paper", num_classes=35, alpha=alpha).to(device)
    images = torch.randint(0, 256, (batch, 208, 416, 3), dtype=torch.uint8, device=device).permute(0, 3, 1, 2)
    target = torch.randint(0, 35, (batch, 208, 416), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    else:
        images = images.contiguous()
    optimizer = DecoupledAdamW(model.parameters(), lr=0.003, decay=1e-4)
    forward = torch.compile(model, mode=compiled) if compiled else model

    def step() -> None:
        if compiled == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # each call a new step: the last one's outputs are done
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = forward(images)
        loss = pixel_cross_entropy(logits.float(), target) if our_loss else F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # after 2 warm-up steps (and compilation); CUDA graphs are recorded on the second call and replayed after
    seconds, peak = timed_steps(step, steps, device, warmup=3 if compiled == "reduce-overhead" else 2)
    return batch / seconds, peak


PEER = "the study's original code (Keras, tensorflow-cpu, fp32)"


def variant_speed(name: str, alpha: float, batch: int, steps: int) -> tuple[float, float]:
    """``step_speed`` of one variant in a fresh process (as the peer runs), so that no variant inherits another's
    allocator state or warm caches."""
    result = subprocess.run([sys.executable, __file__, "--one", name, "--alphas", str(alpha), "--batch", str(batch),
                             "--steps", str(steps)], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{name} failed: {result.stderr[-1500:]}")
    speed, peak = json.loads(result.stdout.strip().splitlines()[-1])
    return speed, float("nan") if peak is None else peak


def keras_speed(python: str, original: str, alpha: float, batch: int, steps: int) -> dict | None:
    """The peer's JSON line (images_per_s, framework, threads...), or None when it failed."""
    script = Path(__file__).with_name("keras_peer.py")
    result = subprocess.run([python, str(script), "--original", original, "--alpha", str(alpha), "--batch",
                             str(batch), "--steps", str(steps), "--threads", str(torch.get_num_threads())],
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(f"keras peer failed: {result.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


MEMORY_SCRIPT = """
import re, sys
from cityscapes_lab.study.tasks import TrainingTask, execute
task = TrainingTask(key="memory", seed=0, train=dict(epochs=1, steps_per_epoch=3, threads=0,
                    keep_freed_memory=sys.argv[4] == "keep"), data=sys.argv[1], train_set=sys.argv[2],
                    out_dir=sys.argv[3], show_progress=False)
result = execute(task)
assert result.status == "done", result
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so it would report the benchmark's own peak
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 2**20)  # GiB
"""


def fake_paper_data(root: Path, train: int = 2975, val: int = 500) -> Path:
    """A paper-protocol folder of the study's sizes with random pixels (memory depends on shapes only)."""
    from cityscapes_lab import atomic
    from cityscapes_lab.data.prepare import FORMAT, PrepareOptions, make_splits

    rng = np.random.default_rng(0)
    ids = {"train": [f"aachen_{i:06d}_000019" for i in range(train)],
           "val": [f"frankfurt_{i:06d}_000019" for i in range(val)]}
    (root / "arrays").mkdir(parents=True)
    for source, names in ids.items():
        images = np.lib.format.open_memmap(root / "arrays" / f"{source}.images.npy", "w+", np.uint8,
                                           (len(names), 208, 416, 3))
        labels = np.lib.format.open_memmap(root / "arrays" / f"{source}.labels.npy", "w+", np.uint8,
                                           (len(names), 208, 416))
        for start in range(0, len(names), 256):
            stop = min(start + 256, len(names))
            images[start:stop] = rng.integers(0, 256, (stop - start, 208, 416, 3), dtype=np.uint8)
            labels[start:stop] = rng.integers(0, 35, (stop - start, 208, 416), dtype=np.uint8)
        images.flush()
        labels.flush()
    splits = make_splits(PrepareOptions(protocol="paper"), ids)
    atomic.write_json(root / "splits.json", splits)
    atomic.write_json(root / "meta.json", {
        "format": FORMAT, "protocol": "paper", "label_scheme": "paper35", "num_classes": 35, "ignore_index": None,
        "size": [416, 208], "source": {"path": str(root), "kind": "folders", "stand_in": True,
                                       "original_size": [2048, 1024]},
        "sources": {s: {"ids": n, "labels": True, "instances": False} for s, n in ids.items()},
        "counts": {k: len(v) for k, v in splits.items()}})
    return root


def main() -> None:
    parser = benchmark_arguments(__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--alphas", default="1,2")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each row is their median")
    parser.add_argument("--keras-python", default=None,
                        help="the peer's Python (a venv from requirements-peer.txt) to time the study's original code")
    parser.add_argument("--original", default=os.environ.get("IM_ORIGINAL"),
                        help="checkout of the study's repository for the peer (default: $IM_ORIGINAL)")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated rows to run, of {', '.join(VARIANT_IDS)} [default: all; on the CPU "
                        "all but bf16-graphs]")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory of whole trainings")
    parser.add_argument("--memory-only", action="store_true", help="only measure the memory of whole trainings")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one variant, JSON on stdout
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if args.one:
        speed, peak = step_speed(float(args.alphas), args.batch, args.steps, device, *VARIANTS[args.one])
        print(json.dumps([speed, None if np.isnan(peak) else peak]))
        return
    if args.keras_python and not args.original:
        parser.error("--keras-python needs --original (or IM_ORIGINAL): the study's repository")
    if args.variants:
        unknown = [v for v in args.variants.split(",") if v not in VARIANT_IDS]
        if unknown:
            parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANT_IDS)}")
        wanted = {VARIANT_IDS[v] for v in args.variants.split(",")}
    else:
        wanted = {name for key, name in VARIANT_IDS.items() if device.type == "cuda" or key != "bf16-graphs"}
    rows, notes, peer_info = [], [], None
    for alpha in ([] if args.memory_only else [float(a) for a in args.alphas.split(",")]):
        names = ([PEER] if args.keras_python else []) + [name for name, (_, _, compiled, _, _) in VARIANTS.items()
                                                         if name in wanted and not (compiled and args.skip_compile)]
        speeds: dict[str, list[float]] = {name: [] for name in names}
        peaks: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            for name in (names if round_ % 2 == 0 else names[::-1]):
                if name == PEER:
                    peer_info = keras_speed(args.keras_python, args.original, alpha, args.batch, args.steps)
                    if peer_info is not None:
                        speeds[name].append(peer_info["images_per_s"])
                    continue
                speed, peak = variant_speed(name, alpha, args.batch, args.steps)
                speeds[name].append(speed)
                peaks[name].append(peak)
                print(f"round {round_ + 1}: {name}, alpha {alpha}: {speed:.2f} images/s", flush=True)
        medians = {name: statistics.median(v) for name, v in speeds.items() if v}
        reference = medians.get(PEER) or next(iter(medians.values()))
        for name, speed in medians.items():
            peak = max(peaks[name]) if peaks[name] else float("nan")
            rows.append([name, alpha, f"{speed:.2f}", f"{speed / reference:.2f}x",
                         "-" if np.isnan(peak) else f"{peak:.2f}"])
    if rows:
        notes.append(f"{device.type}, batch {args.batch}, 416x208, 35 classes, AdamW; each row the median of "
                     f"{args.rounds} alternating rounds, each round the median of {args.steps} steps after 2 "
                     "warm-up steps, each variant in a fresh process; ratios against the study's original code "
                     "where measured, else the plain port. Training keeps freed memory (cityscapes_lab.memory: "
                     "glibc serves large blocks from its heap, so steps do not page-fault their activations in "
                     "again); the 'default malloc' row is the same step without it.")
        notes.append(f"threads: PyTorch {torch.get_num_threads()} intra-op (OMP_NUM_THREADS "
                     f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), THP_MEM_ALLOC_ENABLE="
                     f"{os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}"
                     + (f"; peer {peer_info['threads']['intra_op']} intra-op, inter-op "
                        f"{peer_info['threads']['inter_op'] or 'TF default'}" if peer_info else ""))
    if peer_info:
        notes.append(f"peer: {peer_info['code']}, {peer_info['framework']}, policy {peer_info['policy']}: the "
                     "study's get_unet and train_multiclass (tensorflow-addons AdamW, CategoricalCrossentropy, "
                     "accuracy and MeanIoU metrics, tf.data over a PNG folder), timed per step by a Keras callback.")
    if args.memory or args.memory_only:
        with tempfile.TemporaryDirectory() as tmp:
            data = fake_paper_data(Path(tmp) / "data")
            for split, memory in itertools.product(("train_labeled", "train_full"), ("keep", "hand back")):
                out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(data), split,
                                      str(Path(tmp) / f"{split}-{memory}"), memory], capture_output=True, text=True)
                peak = float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else float("nan")
                count = json.loads((data / "meta.json").read_text())["counts"][split]
                setting = "default settings" if memory == "keep" else "train.keep_freed_memory=false"
                notes.append(f"peak memory (peak resident set) of a whole paper-protocol training task on {split} "
                             f"({count} images at 416x208, batch 32, fp32, {setting}: 3 steps, validation on "
                             f"250 images, then scoring of val, test and train_unlabeled): {peak:.2f} GiB")
    title = "memory of whole paper-protocol trainings" if args.memory_only else \
        f"train_step: the study's U-Net, one training step ({device.type})"
    record(title, markdown_table(["implementation", "alpha", "images/s", "ratio", "peak GPU GiB"], rows)
           if rows else "", notes, save=not args.no_record)


if __name__ == "__main__":
    main()
