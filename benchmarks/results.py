"""Shared by the benchmark scripts: describe the machine, print a table, append it to RESULTS.md."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


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


def record(title: str, table: str, notes: list[str]) -> None:
    """Print the table and append it, dated and with the machine, to benchmarks/RESULTS.md."""
    stamp = time.strftime("%Y-%m-%d %H:%M")
    block = f"## {title}\n\n{stamp} on {machine()}\n\n{table}\n\n" + "".join(f"- {n}\n" for n in notes) + "\n"
    print(block)
    existing = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n\n"
    RESULTS.write_text(existing + block)
