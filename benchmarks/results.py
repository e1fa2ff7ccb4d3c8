"""Shared by the benchmark scripts: time a step, describe the machine, print a table, append it to RESULTS.md."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
CACHE = Path(__file__).parents[1] / ".bench"  # generated stand-in data, kept between runs


def benchmark_arguments(doc: str, *, device: bool = False, json: bool = False,
                        cache: bool = False) -> argparse.ArgumentParser:
    """A benchmark's parser with the options they share (``add_shared_options``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_shared_options(parser, device=device, json=json, cache=cache)
    return parser


def add_shared_options(parser: argparse.ArgumentParser, *, record: bool = True, device: bool = False,
                       json: bool = False, cache: bool = False) -> None:
    """The options the benchmarks share, on ``parser`` (a script's own or one of its subcommands): --no-record,
    and where asked --device (cuda when there is one), --json FILE (its rows, for gpu_check.sh) and --cache (the
    stand-in data it generates)."""
    if record:
        parser.add_argument("--no-record", action="store_true", help="print the table, do not append it to RESULTS.md")
    if device:
        import torch

        parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    if json:
        parser.add_argument("--json", type=Path, default=None, help="also write the rows here (for gpu_check.sh)")
    if cache:
        parser.add_argument("--cache", type=Path, default=CACHE, help="where generated stand-in data is kept")


def timed_steps(step: Callable[[], object], steps: int, device, warmup: int = 2) -> tuple[float, float]:
    """(median seconds of ``steps`` calls of ``step`` after ``warmup`` untimed ones (and compilation), peak GPU
    memory in GiB over the timed calls, NaN on the CPU). On a GPU each call is waited for."""
    import torch

    cuda = device.type == "cuda"
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return statistics.median(times), peak


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {cores} cores{memory}{gpu}, Python {platform.python_version()}"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def record(title: str, table: str, notes: list[str], save: bool = True) -> None:
    """Print the table with its title and notes and (``save``) append it, dated and with the machine, to
    benchmarks/RESULTS.md; ``save=False`` is a script's --no-record."""
    stamp = f"{time.strftime('%Y-%m-%d %H:%M')} on {machine()}\n\n" if save else ""
    block = f"## {title}\n\n{stamp}{table}\n\n" + "".join(f"- {n}\n" for n in notes) + "\n"
    print(block)
    if not save:
        return
    from cityscapes_lab import atomic

    existing = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n\n"
    atomic.write_text(RESULTS, existing + block)  # an interrupted script leaves the file as it was


#: the column of study_throughput.py's rows that holds the rate of every training running at once
RATE_ALL = "images/s all at once"
GOAL_HOURS = 12  # the goal for the full paper study on one GPU
FULL_STUDY_HOURS = "full study h"


def with_projection(header: list[str], rows: list[list], images: int,
                    predicting: float = 0.0) -> tuple[list[str], list[list], list[str]]:
    """study_throughput.py's header and rows with a column of the hours of a study of ``images`` images seen in
    training at each row's rate of all trainings at once, and the notes that say what the goal needs and which
    row comes closest (a table projected already is returned as it is, without notes). ``predicting``: the time
    the plan gives its predictions (validations, scoring, teachers' labels) as a fraction of its training steps'."""
    if RATE_ALL not in header or FULL_STUDY_HOURS in header:  # nothing to project, or projected already
        return header, rows, []
    column = header.index(RATE_ALL)
    rates = []
    for row in rows:
        try:
            rates.append(float(row[column]))
        except (ValueError, IndexError):
            rates.append(None)
    header = header[:column + 1] + [FULL_STUDY_HOURS] + header[column + 1:]
    rows = [row[:column + 1] + [f"{images / rate / 3600:.1f}" if rate else "-"] + row[column + 1:]
            for row, rate in zip(rows, rates)]
    needed = images / (GOAL_HOURS * 3600)
    notes = [f"full paper study: {images:,} images seen in training (its plan); {GOAL_HOURS} hours need "
             f"{needed:,.0f} images/s of all trainings at once (training steps only)"]
    best = max(((rate, row[0]) for rate, row in zip(rates, rows) if rate), default=None)
    if best:
        notes.append(f"fastest measured: {best[1]}, {best[0]:,.1f} images/s, {images / best[0] / 3600:,.1f} hours: "
                     f"{best[0] / needed:.2f}x the rate the {GOAL_HOURS}-hour goal needs")
        if predicting:
            notes.append(f"with the predicting the plan estimates ({predicting:.1%} of the training steps' time, at "
                         f"its assumed 3x the training's speed per pixel): {GOAL_HOURS} hours need "
                         f"{needed * (1 + predicting):,.0f} images/s; the fastest row "
                         f"{images * (1 + predicting) / best[0] / 3600:,.1f} hours")
        notes.append("with the longest chain of dependent tasks: `cityscapes-lab study --approaches all --plan "
                     "--executor local --parallel N --throughput-all RATE` with a row's N and rate")
    return header, rows, notes
