"""What a long study tells while it runs: a progress bar on a terminal; elsewhere (``nohup``, ``> log``, a cluster
job) one line per finished training on stderr. Every line also goes to ``RUNS/study.log``, so a study that runs
for days can be followed with ``tail -f``."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from .tasks import TaskResult


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class StudyProgress:
    """Counts finished trainings against the plan; ``show`` False keeps stderr quiet (the log is still written)."""

    def __init__(self, total: int, log_path: Path, show: bool = True, stream: TextIO | None = None):
        self.total, self.finished = total, 0
        self.stream = stream or sys.stderr
        self.lines = show and not self.stream.isatty()  # the bar is off there: say it in lines instead
        self.bar = tqdm(total=total, desc="study", unit="model", disable=None if show else True, dynamic_ncols=True,
                        file=self.stream)
        self.log_path = Path(log_path)
        self.seconds, self.run_now = 0.0, 0  # trainings run by this call, for the time-left estimate

    def _write(self, line: str) -> None:
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(stamped + "\n")
        if self.lines:
            print(stamped, file=self.stream, flush=True)

    def start(self, done_before: int) -> None:
        self._write(f"study: {self.total} trainings planned, {done_before} finished before")

    def skipped(self, count: int = 1) -> None:
        """Trainings found finished from an earlier call."""
        self.finished += count
        self.bar.update(count)

    def done(self, key: str, result: TaskResult) -> None:
        """A training of this call finished (done or failed): one line with its figures and what is left."""
        self.finished += 1
        self.run_now += 1
        self.seconds += result.seconds
        self.bar.update()
        left = max(0, self.total - self.finished)
        eta = f", about {_duration(left * self.seconds / self.run_now)} left" if left else ""
        val = result.scores.get("val", {})
        if result.status == "failed":
            figure = f"failed: {result.error}"
        elif not math.isnan(val.get("paper_miou", math.nan)):
            figure = f"val mIoU {val['paper_miou']:.4f}"
        elif "miou" in val:  # the standard protocol: the official 19-class val mIoU
            figure = f"val mIoU {val['miou']:.4f} (official)"
        elif "total_loss" in val:
            figure = f"val loss {val['total_loss']:.4f}"
        else:
            figure = "done"
        self._write(f"{key}: {figure} in {_duration(result.seconds)}; {self.finished}/{self.total} finished, "
                    f"{left} left{eta}")

    def close(self) -> None:
        self.bar.close()
