"""``cityscapes-lab report RUNS``: read the results database and write the report files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import atomic
from ..data.prepared import load_prepared
from ..models.checkpoints import load_checkpoint
from ..engine.inference import predict
from ..engine.runtime import Runtime
from ..errors import DataError
from ..labels import PAPER_PALETTE, TRAINID_PALETTE
from ..models import build_model
from ..outputs import check_output_folder
from ..study.keys import GroupKey, StudyLayout
from ..study.store import ResultStore
from .figures import generation_figure, picture_panel
from .tables import (collect, csv_text, evalnet_markdown, failures_markdown, is_helper, markdown,
                     pseudo_label_markdown)

STAND_IN_NOTE = ("Data: generated stand-ins in the Cityscapes format, not Cityscapes. These numbers show that the "
                 "pipeline works and say nothing about Cityscapes.")


@dataclass(frozen=True)
class ReportFiles:
    table_md: Path
    table_csv: Path
    figure: Path
    panel: Path | None
    main_table: str = ""  # the approach x generation table of results.md, as Markdown


def _panel_models(store: ResultStore, layout: StudyLayout, limit: int = 4) -> dict[str, Path]:
    """The top-1 checkpoint of run 1's last generation of each approach (baselines first), at most ``limit``."""
    chosen: dict[str, tuple[GroupKey, Path]] = {}
    for row in store.trainings():
        if is_helper(row):
            continue
        group = GroupKey(row.approach, row.run, row.n, row.generation)
        label = row.approach.upper() + (f" n={row.n}" if row.n else "")
        top = layout.top(group, 1)
        if row.run == 1 and top.exists() and (label not in chosen or group.generation > chosen[label][0].generation):
            chosen[label] = (group, top)
    return {label: path for label, (_, path) in list(chosen.items())[:limit]}


def write_report(runs: Path, *, panel_images: int = 3) -> ReportFiles:
    """Write ``report/results.md``, ``results.csv``, ``figure.png`` and ``panel.png`` into the study folder."""
    layout = StudyLayout(Path(runs))
    if not layout.database.exists():
        raise DataError(f"{runs}: no results database ({layout.database.name}); run `cityscapes-lab study` first")
    check_output_folder(layout.report, what="a report", ours=lambda folder: True)
    with ResultStore(layout.database) as store:
        statuses = [row.status for row in store.trainings()]
        if "done" not in statuses:
            running = f" ({len(statuses)} started, none finished successfully)" if statuses else ""
            raise DataError(f"{runs}: no training has finished yet{running}, so there is nothing to report; run (or "
                            "continue) `cityscapes-lab study` first")
        rows = collect(store)
        stand_in = bool(store.get_meta("stand_in"))
        data_dir = store.get_meta("data")
        protocol = store.get_meta("protocol")
        eval_rule = (store.get_meta("config") or {}).get("study", {}).get("eval_rule", "whole")
        panel_models = _panel_models(store, layout)
        evalnet_table = evalnet_markdown(store)
        failures = failures_markdown(store)
    layout.report.mkdir(parents=True, exist_ok=True)
    note = STAND_IN_NOTE if stand_in else "Data: the Cityscapes download."
    columns = ("'paper' columns use the study's per-image metric (35 indices), 'official' columns the Cityscapes "
               "benchmark's 19-class dataset-level scores at the prepared resolution" if protocol == "paper" else
               "the columns are the Cityscapes benchmark's 19-class dataset-level scores on val at the prepared "
               f"resolution, under the evaluation rule {eval_rule}")
    header = (f"# Results of {Path(runs).name}\n\nProtocol: {protocol}. {note}\n\n"
              f"Mean ± standard deviation over runs of each group's mean over its models; {columns}.\n\n")
    main_table = markdown(rows)
    files = ReportFiles(layout.report / "results.md", layout.report / "results.csv", layout.report / "figure.png",
                        layout.report / "panel.png" if panel_models else None, main_table)
    body = header + main_table
    pseudo_table = pseudo_label_markdown(rows)
    if pseudo_table:
        body += ("\n## Pseudo-labelled sets\n\nMeans over runs; IM sizes are the teachers' inconsistency masks "
                 "(pixels, and share of the image) on each split.\n\n" + pseudo_table)
    if evalnet_table:
        body += "\n## EvalNets\n\n" + evalnet_table
    if failures:
        body += "\n## Failed trainings\n\nNot in the figures above; the reason each one stopped.\n\n" + failures
    atomic.write_text(files.table_md, body)
    atomic.write_text(files.table_csv, csv_text(rows))
    title = f"{Path(runs).name}: {protocol} protocol" + (" (stand-in data, not Cityscapes)" if stand_in else "")
    generation_figure(rows, files.figure, title)
    if panel_models and data_dir:
        data = load_prepared(data_dir)
        split = data.split("test" if "test" in data.splits and data.has_labels("test") else "val")
        count = min(panel_images, len(split))
        images, truth = np.asarray(split.images[:count]), np.asarray(split.labels[:count])
        predictions = {}
        for label, path in panel_models.items():
            saved = load_checkpoint(path)
            model = build_model(saved["model_name"], saved["num_classes"], **saved["model_options"])
            model.load_state_dict(saved["state_dict"])
            predictions[label] = predict(model, images, Runtime.cpu(eval_batch_size=8))
        palette = PAPER_PALETTE if data.protocol == "paper" else TRAINID_PALETTE
        picture_panel(images, truth, predictions, palette, files.panel, title)
    return files
