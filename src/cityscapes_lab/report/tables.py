"""The results table: approach x (n, generation), mean and standard deviation over runs, both metric families.

A group's figure in one run is the mean over its trained models (every model of a group is an equal draw);
the table gives the mean and standard deviation of that over runs, plus the run-mean of the group's top-1 model
(best by val mIoU, as the study ranks)."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..study.approaches import BASELINES
from ..study.keys import GroupKey
from ..study.store import ResultStore, TrainingRow

@dataclass(frozen=True)
class TableSpec:
    """What the table of a protocol shows: its (column title, split, metric) in order, the top-1 column, and the
    column the generation figure plots (with its axis label)."""

    columns: tuple[tuple[str, str, str], ...]
    top1: tuple[str, str, str]
    figure: str
    axis: str


SPECS = {
    # the study's figure is its per-image test mIoU; the official 19-class scores beside it
    "paper": TableSpec((("paper test mIoU", "test", "paper_miou"), ("paper val mIoU", "val", "paper_miou"),
                        ("paper test mPA", "test", "paper_mpa"), ("official test mIoU (19 cl.)", "test", "miou"),
                        ("official test iIoU", "test", "iiou"), ("official val mIoU (19 cl.)", "val", "miou")),
                       ("top-1 paper test mIoU", "test", "paper_miou"), "paper test mIoU",
                       "mIoU test (per image, the study's metric)"),
    # the semi-supervised benchmark reports val (the official test labels are not public)
    "standard": TableSpec((("official val mIoU (19 cl.)", "val", "miou"), ("official val iIoU", "val", "iiou"),
                           ("official val category mIoU", "val", "category_miou")),
                          ("top-1 official val mIoU", "val", "miou"), "official val mIoU (19 cl.)",
                          "mIoU val (official, 19 classes, under study.eval_rule)"),
}


@dataclass
class TableRow:
    approach: str
    label: str
    n: int
    generation: int  # 0-based
    runs: int
    models: int
    failed: int
    mean: dict[str, float] = field(default_factory=dict)  # column title -> mean over runs
    std: dict[str, float] = field(default_factory=dict)
    top1: float = math.nan  # run-mean of the top-1 model's score (the spec's top1: paper test mIoU, or val mIoU)
    extra: dict[str, float] = field(default_factory=dict)  # group statistics (e.g. mean IM size)
    protocol: str = "paper"

    @property
    def spec(self) -> TableSpec:
        return SPECS[self.protocol]


def is_helper(row: TrainingRow) -> bool:
    """Trainings that are not segmentation models (the EvalNets of an approach)."""
    return row.role != "models"


def label_of(approach: str) -> str:
    from ..semisup.recipes import RECIPES

    if approach in BASELINES:
        return BASELINES[approach].label
    return RECIPES[approach].label if approach in RECIPES else approach.upper()


def evalnet_markdown(store: ResultStore) -> str:
    """The EvalNets of the study: validation figures per run and network (empty when there are none)."""
    lines = []
    for row in store.trainings():
        if not is_helper(row) or row.status != "done":
            continue
        val = store.scores(row.key).get("val", {})
        lines.append(f"| {row.approach} | {row.run} | {row.member} | {val.get('total_loss', math.nan):.4f} "
                     f"| {val.get('iou_mae', math.nan):.4f} | {val.get('detection_accuracy', math.nan):.4f} |")
    if not lines:
        return ""
    return ("| EvalNets of | run | net | val loss (MSE + BCE) | val IoU MAE | val detection accuracy |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")


def failures_markdown(store: ResultStore) -> str:
    """Every failed training with its reason (empty when none failed)."""
    rows = [f"| {row.key} | {(row.error or 'unknown').replace('|', '/')} |" for row in store.trainings()
            if row.status == "failed"]
    return "| training | reason |\n|---|---|\n" + "\n".join(rows) + "\n" if rows else ""


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def collect(store: ResultStore) -> list[TableRow]:
    """One row per (approach, n, generation), ordered as the approaches were run."""
    protocol = store.get_meta("protocol") or "paper"
    spec = SPECS[protocol]
    per_run: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    wanted = {(split, metric): title for title, split, metric in spec.columns}
    for approach, run, n, generation, _, split, metric, value in store.score_table({m for _, _, m in spec.columns}):
        title = wanted.get((split, metric))
        if title is not None:
            per_run[(approach, n, generation, run)][title].append(math.nan if value is None else value)
    counts: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    order: list[tuple] = []
    for row in store.trainings():
        if is_helper(row):
            continue
        group = (row.approach, row.n, row.generation)
        if group not in order:
            order.append(group)
        counts[group][row.status] += 1
    stats = defaultdict(dict)
    for grp, split, metric, value in store.group_stats():
        stats[grp][f"{split} {metric}"] = value
    rows = []
    for approach, n, generation in order:
        runs = sorted({run for (a, nn, g, run) in per_run if (a, nn, g) == (approach, n, generation)})
        row = TableRow(approach, label_of(approach), n, generation, len(runs), counts[(approach, n, generation)]["done"],
                       counts[(approach, n, generation)]["failed"], protocol=protocol)
        for title, _, _ in spec.columns:
            run_means = [_mean_std(per_run[(approach, n, generation, run)][title])[0] for run in runs]
            row.mean[title], row.std[title] = _mean_std(run_means)
        tops = []
        for run in runs:
            ranking = store.ranking(GroupKey(approach, run, n, generation))
            if ranking:
                _, split, metric = spec.top1
                tops.append(store.scores(ranking[0][0]).get(split, {}).get(metric, math.nan))
        row.top1 = _mean_std(tops)[0]
        group_values: dict[str, list[float]] = defaultdict(list)
        for run in runs:
            for name, value in stats.get(str(GroupKey(approach, run, n, generation)), {}).items():
                group_values[name].append(value)
        row.extra = {name: _mean_std(values)[0] for name, values in group_values.items()}
        rows.append(row)
    from ..semisup.recipes import RECIPES

    canonical = list(BASELINES) + list(RECIPES)  # baselines first, then the study's order of approaches
    return sorted(rows, key=lambda r: (canonical.index(r.approach) if r.approach in canonical else len(canonical),
                                       r.n, r.generation))


def _fmt(mean: float, std: float | None = None) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f}" if std is None or math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


IM_SHARE = "train_unlabeled mean_im_share"


def markdown(rows: list[TableRow]) -> str:
    """The results table; for the IM family also the mean inconsistency-mask size on the unlabeled images."""
    with_im = any(IM_SHARE in row.extra for row in rows)
    spec = rows[0].spec if rows else SPECS["paper"]
    header = (["approach", "n", "generation", "runs", "models"] + [title for title, _, _ in spec.columns]
              + [spec.top1[0]] + (["mean IM size (unlabeled, % of pixels)"] if with_im else []))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        baseline = row.approach in BASELINES
        cells = [row.label, str(row.n) if row.n else "-", "-" if baseline else str(row.generation + 1),
                 str(row.runs), f"{row.models}" + (f" (+{row.failed} failed)" if row.failed else "")]
        cells += [_fmt(row.mean[title], row.std[title]) for title, _, _ in spec.columns]
        cells += [_fmt(row.top1)]
        if with_im:
            share = row.extra.get(IM_SHARE, math.nan)
            cells.append("-" if math.isnan(share) else f"{100 * share:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pseudo_label_markdown(rows: list[TableRow]) -> str:
    """Statistics of the pseudo-labelled sets per generation (IM sizes, EvalNet scores, copies, selections)."""
    names = sorted({name for row in rows for name in row.extra})
    if not names:
        return ""
    lines = ["| approach | n | generation | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for row in rows:
        if row.extra:
            values = [_fmt(row.extra.get(name, math.nan)) for name in names]
            lines.append(f"| {row.label} | {row.n} | {row.generation + 1} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[TableRow]) -> str:
    buffer = io.StringIO()
    extra_names = sorted({name for row in rows for name in row.extra})
    spec = rows[0].spec if rows else SPECS["paper"]
    writer = csv.writer(buffer)
    writer.writerow(["approach", "n", "generation", "runs", "models", "failed"]
                    + [f"{title} {kind}" for title, _, _ in spec.columns for kind in ("mean", "std")]
                    + [spec.top1[0]] + extra_names)
    for row in rows:
        writer.writerow([row.approach, row.n, row.generation + 1, row.runs, row.models, row.failed]
                        + [f"{value:.6f}" for title, _, _ in spec.columns
                           for value in (row.mean[title], row.std[title])]
                        + [f"{row.top1:.6f}"] + [f"{row.extra.get(name, math.nan):.6f}" for name in extra_names])
    return buffer.getvalue()
