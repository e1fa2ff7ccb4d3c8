"""The study-style figure (test mIoU per generation, baselines as horizontal lines) and the picture panel."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..study.approaches import BASELINES  # noqa: E402
from .tables import TableRow  # noqa: E402

def _has_generations(approach: str) -> bool:
    from ..semisup.recipes import RECIPES

    return approach not in RECIPES or RECIPES[approach].generations


def generation_figure(rows: list[TableRow], path: Path, title: str) -> None:
    """mIoU per generation (the protocol's: the study's per-image test mIoU, or the official val mIoU), one line
    per approach (and n), baselines dashed."""
    metric = rows[0].spec.figure if rows else "paper test mIoU"  # the column every line plots
    figure, axis = plt.subplots(figsize=(8, 5), dpi=120)
    generations = max([row.generation + 1 for row in rows if row.approach not in BASELINES] + [1])
    xs = np.arange(1, max(generations, 2) + 1)
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    flat = [row for row in rows if row.approach in BASELINES or not _has_generations(row.approach)]
    for row in flat:
        if not math.isnan(row.mean[metric]):
            colour = next(colours)
            kind = "baseline" if row.approach in BASELINES else f"n={row.n}, no generations"
            axis.axhline(row.mean[metric], linestyle="--" if row.approach in BASELINES else "-.", color=colour,
                         label=f"{row.label} ({kind})")
            if row.std[metric] > 0:  # NaN (a single run) is not > 0
                axis.axhspan(row.mean[metric] - row.std[metric], row.mean[metric] + row.std[metric], color=colour,
                             alpha=0.1)
    series: dict[str, list[TableRow]] = {}
    for row in rows:
        if row not in flat:
            series.setdefault(f"{row.label}" + (f" n={row.n}" if row.n else ""), []).append(row)
    for name, points in series.items():
        points.sort(key=lambda r: r.generation)
        axis.errorbar([p.generation + 1 for p in points], [p.mean[metric] for p in points],
                      yerr=[p.std[metric] for p in points], marker="o", capsize=3, label=name, color=next(colours))
    axis.set_xticks(xs)
    axis.set_xlabel("generation")
    axis.set_ylabel(rows[0].spec.axis if rows else "mIoU")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def picture_panel(images: np.ndarray, truth: np.ndarray, predictions: dict[str, np.ndarray], palette: np.ndarray,
                  path: Path, title: str) -> None:
    """Rows of (image, ground truth, one prediction per model), labels coloured with the Cityscapes palette."""
    columns = 2 + len(predictions)
    figure, axes = plt.subplots(len(images), columns, figsize=(3 * columns, 1.7 * len(images) + 0.6), dpi=120,
                                squeeze=False)
    for i in range(len(images)):
        panels = [("image", images[i]), ("ground truth", palette[truth[i]])]
        panels += [(name, palette[p[i]]) for name, p in predictions.items()]
        for axis, (name, picture) in zip(axes[i], panels):
            axis.imshow(picture)
            axis.set_xticks([])
            axis.set_yticks([])
            if i == 0:
                axis.set_title(name, fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
