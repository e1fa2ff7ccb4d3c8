"""Study throughput: one fixed small study (LDT + IM) run on each executor side by side, trainings per hour.

The study: 1 run, 4 LDT models, IM (n = 2) with 2 students over 2 generations (8 trainings), on generated
stand-in data (cached in .bench/). On the CPU it runs with the serial executor, the local executor
(--parallel, default 2 processes) and Ray (a local instance started here on 127.0.0.1 and shut down after), all
with the same train.threads (default 1), because on the CPU the torch thread count changes the rounding of the
results: only then can the three results databases be compared score for score. A reference row runs the
serial executor with all cores (the default thread count), whose scores differ in the last digits.

On a GPU (--device cuda) it runs the local executor once per --parallel value (e.g. 1,2,4,8 concurrent
trainings sharing the device) on FDT models alone (as many as that value: one wave of trainings that all run at
once) and reports trainings per hour for each, and whether NVIDIA MPS is on; the single training runs twice, the
second time with its batches copied from the host each step (train.device_data=false) rather than gathered from
the device's copy of the set. --waves runs that layout on the CPU too (gpu_check.sh's rehearsal of it; there
device_data changes nothing).

Every row also gives the steady rate of one training (images of an epoch over the median seconds of its epochs
after the first, which holds the warm-up; the baseline trainings, whose set size is known), the rate of all the
tasks at once (that times the tasks running at once), and with --full-study-images (the images seen in training
of a study's plan, ``study --plan``) the hours of that study at the rate of all at once: training steps only,
evaluation and pseudo-labelling not counted.

    python benchmarks/study_throughput.py [--executors serial,local,ray,serial-all] [--parallel 2]
    python benchmarks/study_throughput.py --device cuda --parallel 1,2,4,8 [--json rows.json] [--no-record]
    python benchmarks/study_throughput.py --waves --parallel 1,2 [...]
        [--full-study-images 374374500]
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import RATE_ALL, benchmark_arguments, markdown_table, record, with_projection  # noqa: E402

import cityscapes_lab  # noqa: E402
from cityscapes_lab import atomic  # noqa: E402
from cityscapes_lab.config import load_config  # noqa: E402
from cityscapes_lab.engine.runtime import busy_elsewhere  # noqa: E402
from cityscapes_lab.parallel import default_workers  # noqa: E402
from cityscapes_lab.semisup.study import run_study  # noqa: E402
from cityscapes_lab.study.executors import start_local_ray  # noqa: E402

CPU_EXECUTORS = ("serial", "local", "ray", "serial-all")


def stand_in_data(cache: Path, train: int, val: int, size: tuple[int, int], workers: int) -> Path:
    """Prepared paper-protocol stand-in data (generated once, reused from the cache)."""
    width, height = size
    raw = cache / f"study-throughput-raw-{width}x{height}-{train}-{val}"
    prepared = raw.with_name(raw.name.replace("-raw-", "-prepared-"))
    cityscapes_lab.synthesize(raw, cityscapes_lab.SynthOptions(
        counts={"train": train, "val": val, "test": 0, "train_extra": 0}, width=width, height=height, seed=0),
        workers=workers)
    if not (prepared / "meta.json").exists():
        cityscapes_lab.prepare(raw, prepared, cityscapes_lab.PrepareOptions(protocol="paper", labeled_fraction=0.25),
                               workers=workers)
    return prepared


def query(database: Path, sql: str) -> list[tuple]:
    """The rows of ``sql`` on a results database, opened read-only."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def scores_of(database: Path) -> dict[tuple, float | None]:
    """Every score and ranking entry of a results database, keyed so that two databases can be compared."""
    entries = {("score", *row[:3]): row[3]
               for row in query(database, "SELECT key, split, metric, value FROM scores ORDER BY key, split, metric")}
    entries.update({("rank", grp, rank): (key, score)
                    for grp, rank, key, score in query(database, "SELECT grp, rank, key, score FROM ranking")})
    return entries


def finished_trainings(database: Path) -> list[tuple[float, str]]:
    """(seconds, checkpoint) of each finished training."""
    return query(database, "SELECT seconds, checkpoint FROM trainings WHERE status = 'done'")


def outside_epochs(trainings: list[tuple[float, str]]) -> list[float]:
    """Seconds of each finished training beyond its epochs (which include validation): reading the data,
    building the model, a fresh worker's CUDA start, scoring the eval splits, writing checkpoints."""
    outside = []
    for seconds, checkpoint in trainings:
        history = Path(checkpoint).parent / "history.csv"
        if seconds is not None and history.exists():
            with history.open() as rows:
                outside.append(seconds - sum(float(row["seconds"]) for row in csv.DictReader(rows)))
    return outside


def first_error(database: Path) -> str | None:
    """The first failed training's error, or None when none failed."""
    rows = query(database, "SELECT error FROM trainings WHERE status = 'failed' ORDER BY finished LIMIT 1")
    return rows[0][0] if rows else None


#: the training set of each baseline whose steady rate is measured
BASELINE_SETS = {"fdt": "train_full", "ldt": "train_labeled"}


def steady_rate(out: Path, approach: str, images: int) -> float | None:
    """Images per second of one training in its steady state: the median over the baseline's finished trainings
    of ``images`` (its set: those of an epoch) / (median seconds of its epochs after the first); None without a
    second epoch."""
    rates = []
    for history in sorted(out.glob(f"models/{approach}/run1/gen0/m*/history.csv")):
        with history.open() as rows:
            seconds = [float(row["seconds"]) for row in csv.DictReader(rows)][1:]
        if seconds:
            rates.append(images / statistics.median(seconds))
    return statistics.median(rates) if rates else None


def compare(reference: dict, other: dict) -> str:
    """Whether two studies' scores agree, on the entries both have (waves of different sizes share their first
    trainings: the same seeds, so the same scores where concurrency changes nothing)."""
    if reference == other:
        return f"identical ({sum(k[0] == 'score' for k in reference)} scores)"
    only = ""
    if set(reference) != set(other):
        only = f"; {len(set(reference) ^ set(other))} entries in one only"
        # the shared scores (rankings of groups of different sizes differ by design)
        scored = {k for k in set(reference) & set(other) if k[0] == "score"}
        if not scored:
            return f"differ: no shared scores{only}"
        reference, other = {k: reference[k] for k in scored}, {k: other[k] for k in scored}
        if reference == other:
            return f"identical ({len(scored)} shared scores){only}"
    worst = 0.0
    for key, value in reference.items():
        theirs = other[key]
        if key[0] == "rank":
            value, theirs = value[1], theirs[1]
        if value is None or theirs is None or (isinstance(value, float) and math.isnan(value)):
            continue
        worst = max(worst, abs(value - theirs))
    changed = sum(reference[k] != other[k] for k in reference)
    return f"differ: {changed} entries, largest difference {worst:.2e}{only}"


def mps_state() -> str:
    """Whether NVIDIA MPS is on: the nvidia-smi query, or the client's pipe directory variable."""
    notes = []
    if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        notes.append(f"CUDA_MPS_PIPE_DIRECTORY={os.environ['CUDA_MPS_PIPE_DIRECTORY']}")
    try:
        query = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True, timeout=30).stdout
        lines = sorted({" ".join(line.split()) for line in query.splitlines() if "mps" in line.lower()})
        notes.append("nvidia-smi -q: " + ("; ".join(lines) if lines else "no MPS line"))
    except (OSError, subprocess.SubprocessError):
        notes.append("nvidia-smi not available")
    return ", ".join(notes)


def write_rows(path: Path, title: str, header: list[str], rows: list[list], notes: list[str]) -> None:
    """The table as JSON for gpu_check.sh, written atomically."""
    atomic.write_text(path, json.dumps({"title": title, "header": header, "rows": rows, "notes": notes}, indent=1))


def main() -> None:
    parser = benchmark_arguments(__doc__, json=True, cache=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--executors", default=None,
                        help=f"cpu: comma-separated of {', '.join(CPU_EXECUTORS)} [default: all]; cuda: local only")
    parser.add_argument("--parallel", default=None,
                        help="processes of the local executor; on cuda a list, e.g. 1,2,4,8 [default: cpu 2, cuda 1,2,4,8]")
    parser.add_argument("--threads", type=int, default=None,
                        help="train.threads of every training [default: cpu 1; cuda the cores / largest --parallel]")
    parser.add_argument("--train", type=int, default=None, help="stand-in train images [default: cpu 160, cuda 256]")
    parser.add_argument("--val", type=int, default=16)
    parser.add_argument("--size", default=None, help="stand-in WIDTHxHEIGHT [default: cpu 512x256, cuda 2048x1024]")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per training [default: cpu 6, cuda 10]")
    parser.add_argument("--batch", type=int, default=None, help="train.batch_size [default: cpu 8, cuda 32]")
    parser.add_argument("--waves", action="store_true",
                        help="one wave of FDT trainings per --parallel value, the local executor (the default on cuda)")
    parser.add_argument("--full-study-images", type=int, default=None,
                        help="images seen in training of a study's plan (study --plan): its hours at each row's rate")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a time limit: clean up as after Ctrl-C
    cuda = args.device == "cuda"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device here")
        from cityscapes_lab.engine.runtime import visible_gpus

        # the trainings share one GPU (the local executor would spread them over several)
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpus()[0]
        # the CUDA libraries read once from disk before the first row, in a process of its own (the first row
        # measured 12 s of worker start-up on an H200 against 6 s for the next, the same training)
        subprocess.run([sys.executable, "-c", "import torch; x = torch.ones(1, 3, 8, 8, device='cuda'); "
                        "torch.nn.functional.conv2d(x, x[:, :, :3, :3].repeat(3, 1, 1, 1)).sum().item()"], check=True)
    cores = default_workers()
    waves = cuda or args.waves  # the layout of concurrent trainings on a GPU
    levels = [int(p) for p in (args.parallel or ("1,2,4,8" if waves else "2")).split(",")]
    if waves:
        executors = [f"local:{p}" for p in levels]
        if 1 in levels:  # the single training again, its batches copied from the host: what device_data saves
            executors.append("local:1:host")  # last: measured before (1.07x on an H200), the shared rates first
    else:
        wanted = (args.executors or ",".join(CPU_EXECUTORS)).split(",")
        unknown = [e for e in wanted if e not in CPU_EXECUTORS]
        if unknown:
            parser.error(f"--executors: unknown {', '.join(unknown)}; choose from {', '.join(CPU_EXECUTORS)}")
        executors = [f"local:{levels[0]}" if e == "local" else e for e in wanted]
    threads = args.threads or (max(1, cores // max(levels)) if waves else 1)
    train = args.train or (256 if cuda else 160)
    width, height = map(int, (args.size or ("2048x1024" if cuda else "512x256")).lower().split("x"))
    epochs = args.epochs or (10 if cuda else 6)
    batch = args.batch or (32 if cuda else 8)
    approaches = ["fdt"] if waves else ["ldt", "im"]
    measured = approaches[0]  # the baseline whose steady rate is measured
    title = ("study_throughput: concurrent trainings sharing one GPU (local executor)" if cuda
             else "study_throughput: waves of concurrent trainings on the CPU (local executor)" if waves
             else "study_throughput: the study on the serial, local and Ray executors")
    header = ["executor", "train.threads", "trainings", "wall s", "trainings / hour", "vs first row",
              "median s per training", "of which outside its epochs",
              f"{measured.upper()} images/s per training (steady)", RATE_ALL, "cores busy elsewhere at start",
              "scores vs first row"]
    common = ["study.runs=1", f"train.epochs={epochs}", f"train.batch_size={batch}", f"train.device={args.device}"]
    if not waves:
        common += ["semisup.students=2", "semisup.generations=2", "semisup.n=2", "train.precision=fp32"]

    start = time.perf_counter()
    data = stand_in_data(args.cache, train, args.val, (width, height), workers=cores)
    print(f"stand-in data ready in {data} ({time.perf_counter() - start:.1f} s)", flush=True)
    prepared = cityscapes_lab.load_prepared(data)
    size = "x".join(map(str, prepared.size))
    measured_images = len(prepared.splits[BASELINE_SETS[measured]])

    rows, results, notes, failures = [], {}, [], []
    baseline_rate = None
    reference_scores = None
    ray_started = None
    work = Path(tempfile.mkdtemp(prefix="study-throughput-"))
    try:
        for name in executors:
            executor, parallel, variant = (name.split(":") + ["", ""])[:3]
            parallel = int(parallel or 1)
            run_threads = cores if name == "serial-all" else threads
            models = parallel if waves else 4  # on a GPU one wave: every training runs beside the others
            config = load_config(overrides=common + [f"study.models={models}", f"train.threads={run_threads}"]
                                 + (["train.device_data=false"] if variant == "host" else []))
            out = work / name.replace(":", "-")
            if executor == "ray":
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                began = time.perf_counter()
                start_local_ray(num_cpus=cores, num_gpus=0)
                ray_started = time.perf_counter() - began
            if executor == "serial-all":
                executor = "serial"
            label = {"serial": "serial", "local": f"local --parallel {parallel}",
                     "ray": f"ray (local instance, {cores} CPUs, 1 CPU per task)"}[executor]
            if name == "serial-all":
                label = "serial, all cores (reference)"
            if variant == "host":
                label += ", batches copied from the host (train.device_data=false)"
            others = busy_elsewhere(samples=20, interval=0.05)
            print(f"running {label} with train.threads={run_threads} ({others} cores busy elsewhere) ...",
                  flush=True)
            began = time.perf_counter()
            try:
                summary = run_study(data, out, approaches, config, show_progress=False, executor=executor,
                                    parallel=parallel)
            finally:
                if executor == "ray":
                    import ray

                    ray.shutdown()
            seconds = time.perf_counter() - began
            database = out / "results.sqlite"
            finished = summary.trained - summary.failed  # a failed training is no throughput
            rate = finished / seconds * 3600
            if summary.failed:
                failures.append(f"{label}: {summary.failed} of {summary.trained} trainings failed: "
                                f"{first_error(database)}")
            scores = scores_of(database)
            trainings = finished_trainings(database)
            per_training = [seconds for seconds, _ in trainings]
            beyond = outside_epochs(trainings)
            at_once = {"serial": 1, "local": parallel, "ray": cores}[executor]
            rate_one = steady_rate(out, measured, measured_images)
            rate_all = rate_one * at_once if rate_one else None
            if not rows:  # the first row is the reference, even a failed one
                baseline_rate = rate or None
                reference_scores = scores
                same = "(the reference)"
            else:
                same = compare(reference_scores, scores)
            results[label] = same
            rows.append([label, run_threads, f"{finished} done, {summary.failed} failed", f"{seconds:.1f}",
                         f"{rate:.0f}" if finished else "-",
                         f"{rate / baseline_rate:.2f}x" if finished and baseline_rate else "-",
                         f"{statistics.median(per_training):.1f}" if per_training else "-",
                         f"{statistics.median(beyond):.1f}" if beyond else "-",
                         f"{rate_one:.1f}" if rate_one else "-", f"{rate_all:.1f}" if rate_all else "-",
                         others, same])
            print(rows[-1], flush=True)
            if args.json:  # a run cut short by a time limit keeps the rows it finished
                write_rows(args.json, title, header, rows, [f"cut short: {len(rows)} of {len(executors)} rows"])
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    what = "FDT, 1 run, as many models as tasks at once" if waves else \
        "LDT + IM (n = 2), 1 run, 4 LDT models, 2 students x 2 generations"
    notes.append(f"{what}: {epochs} epochs, batch {batch}, {args.device}, "
                 f"{'precision auto (bf16 autocast)' if cuda else 'fp32'}; stand-in data {width}x{height} -> paper "
                 f"protocol, {train} train (a quarter labeled), {args.val} val; wall time of run_study, worker "
                 "start-up included; one measurement per row.")
    notes.append("outside its epochs: a training's seconds beyond its epochs' (which include validation): reading "
                 "the data, building the model, a fresh worker's CUDA start, scoring the eval splits, checkpoints; "
                 "every training of a study pays it, and the scoring grows with the splits (not in the projection).")
    notes.append("scores compared: every row of the scores and ranking tables of results.sqlite, exactly; "
                 + "; ".join(f"{k}: {v}" for k, v in results.items() if v != "(the reference)") + ".")
    if not cuda:
        notes.append("the same train.threads in every row but the reference, because the CPU thread count changes "
                     "the rounding of results (the reference row shows by how much); with 1 thread the serial "
                     f"executor uses 1 of the {cores} cores.")
    if ray_started is not None:
        notes.append(f"ray.init of the local instance (127.0.0.1, not counted in the row): {ray_started:.1f} s; "
                     f"ray {__import__('ray').__version__}.")
    if args.full_study_images:
        header, rows, projection = with_projection(header, rows, args.full_study_images)
        notes += projection + [f"the full study's hours are at the rates measured on {size} images (the paper's "
                               "study is 416x208)."]
    if waves:
        notes.append(f"MPS: {mps_state()}.")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    if load:
        notes.append(f"load average at the end: {' '.join(load)}.")
    table = markdown_table(header, rows)
    if args.json:
        write_rows(args.json, title, header, rows, notes)
    record(title, table, notes, save=not args.no_record)
    if failures:  # after the table, so that the rows that worked are kept
        sys.exit("study_throughput: " + "; ".join(failures))


if __name__ == "__main__":
    main()
