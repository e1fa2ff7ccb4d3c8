"""The ``cityscapes-lab`` command line: the only place that parses arguments, prints errors and picks exit codes.

Every command is a thin wrapper over the Python API. A LabError (bad input, bad settings) becomes one line,
``error: <what and how to fix it>``, and exit code 2, without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .data.split_families import DEFAULT_FAMILY, FAMILIES  # the table only (no NumPy): for --split-family's help
from .errors import ConfigError, LabError
from .interrupts import ctrl_c_recorded, forget_interpreter_mark


def _size(text: str | None) -> tuple[int, int] | None:
    """``"2048x1024"`` -> (2048, 1024)."""
    if text is None:
        return None
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 16 or int(height) < 16:
        raise ConfigError(f"--size {text!r} is not WIDTHxHEIGHT with both at least 16, e.g. 1024x512")
    return int(width), int(height)


def _say(message: str = "") -> None:
    click.echo(message)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _family_help() -> str:
    """--split-family's help, from the one table of families (data.split_families.FAMILIES)."""
    parts = [f"{f.name}: {f.title}, used by {f.used_by} ({', '.join(f.fractions)})" if f.published else
             f"{f.name}: {f.title}, comparable to no published result (any --fractions; default "
             f"{', '.join(f.fractions)})" for f in FAMILIES.values()]
    return (f"[standard] Which labeled subsets train_labeled_<fraction> are: {'; '.join(parts)}. Default: "
            f"{DEFAULT_FAMILY}, the family most published results use, so numbers compare with most papers. A "
            "result compares only with results on the same family; meta.json records it.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="cityscapes-lab")
def cli() -> None:
    """Semantic segmentation on Cityscapes with few labels: data, the Inconsistency-Masks study, evaluation."""


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--train", "n_train", type=click.IntRange(0), default=None,
              help="Train images [default: 100, or as many as --train-ids names].")
@click.option("--train-ids", "train_ids", metavar="FAMILIES|FILE", default=None,
              help="Train ids to include: published split families, comma-separated (cps, u2pl, cps,u2pl: every "
                   "labeled image of their lists, for `prepare --split-family`), or a file with an id "
                   "<city>_<seq>_<frame> on each line. A larger --train adds generated ids, the unlabeled rest.")
@click.option("--val", "n_val", type=click.IntRange(0), default=40, show_default=True, help="Val images.")
@click.option("--test", "n_test", type=click.IntRange(0), default=10, show_default=True,
              help="Test images (their ground truth holds only the void borders, as the official test split).")
@click.option("--extra", "n_extra", type=click.IntRange(0), default=0, show_default=True,
              help="train_extra images with coarse (gtCoarse) labels.")
@click.option("--size", default="2048x1024", show_default=True, help="Image size WIDTHxHEIGHT.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--zip", "as_zips", is_flag=True, help="Write the official zips instead of folders.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes [default: all cores].")
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
def synth(out: Path, n_train: int | None, train_ids: str | None, n_val: int, n_test: int, n_extra: int, size: str,
          seed: int, as_zips: bool, workers: int | None, force: bool) -> None:
    """Generate Cityscapes-format stand-in data (street scenes drawn procedurally) into OUT.

    OUT gets the official layout: leftImg8bit/<split>/<city>/<id>_leftImg8bit.png and
    gtFine/<split>/<city>/<id>_gtFine_{labelIds,instanceIds,color}.png and _polygons.json.
    """
    from .data.synth import SynthOptions, synthesize, train_ids_from

    width, height = _size(size)
    named = train_ids_from(train_ids) if train_ids else None
    if n_train is None:
        n_train = len(named) if named else 100
    options = SynthOptions(counts={"train": n_train, "val": n_val, "test": n_test, "train_extra": n_extra},
                           width=width, height=height, seed=seed, as_zips=as_zips, train_ids=named)
    if synthesize(out, options, workers=workers, force=force):
        _say(f"wrote {n_train + n_val + n_test + n_extra} stand-in frames ({width}x{height}) to {out}")
    else:
        _say(f"{out} is already complete; pass --force to make it again")


@cli.command()
@click.option("--raw", type=click.Path(path_type=Path), required=True,
              help="The extracted download (leftImg8bit/, gtFine/) or a folder holding the official zips.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to create.")
@click.option("--protocol", type=click.Choice(["paper", "standard"]), required=True,
              help="paper: the study's 416x208, 35-index scheme and splits. standard: the 19-class benchmark.")
@click.option("--labeled-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="[paper] Share of train kept labeled (the study: 0.1).")
@click.option("--split-seed", type=int, default=42, show_default=True, help="[paper] The split's random_state.")
@click.option("--size", default=None, help="[standard] Store a downscaled copy, WIDTHxHEIGHT [default: full size].")
@click.option("--split-family", type=click.Choice(list(FAMILIES)), default=None, help=_family_help())
@click.option("--fractions", default=None,
              help="[standard] Labeled subsets of train to list, comma-separated [default: every one the family "
                   "has]; a published family makes only its own.")
@click.option("--subset-seed", type=int, default=0, show_default=True,
              help="[standard] Seed of the subsets of --split-family seeded.")
@click.option("--labeled-list", type=click.Path(path_type=Path), default=None,
              help="[standard] A file naming the labeled train images, one per line (e.g. a U2PL list).")
@click.option("--coarse", is_flag=True, help="[standard] Include train_extra with its gtCoarse labels.")
@click.option("--export-png", is_flag=True, help="Also write <split>/images/<id>.png and <split>/masks/<id>.png.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes [default: all cores].")
@click.option("--force", is_flag=True, help="Rebuild a complete OUT.")
def prepare(raw: Path, out: Path, protocol: str, labeled_fraction: float, split_seed: int, size: str | None,
            split_family: str | None, fractions: str | None, subset_seed: int, labeled_list: Path | None,
            coarse: bool, export_png: bool, workers: int | None, force: bool) -> None:
    """Validate the raw download and prepare it for a protocol: resized, relabelled arrays and split lists."""
    from .data.prepare import PrepareOptions, prepare as run_prepare

    if protocol == "paper" and (size or coarse or labeled_list or split_family or fractions):
        raise ConfigError("--size, --coarse, --labeled-list, --split-family and --fractions apply to --protocol "
                          "standard; the paper protocol follows the study exactly")
    options = PrepareOptions(
        protocol=protocol, labeled_fraction=labeled_fraction, split_seed=split_seed, size=_size(size),
        split_family=split_family,
        fractions=None if fractions is None else tuple(f.strip() for f in fractions.split(",") if f.strip()),
        subset_seed=subset_seed, labeled_list=str(labeled_list) if labeled_list else None, coarse=coarse,
        export_png=export_png)
    result = run_prepare(raw, out, options, workers=workers, force=force)
    if result.skipped:
        _say(f"{out} is already complete; pass --force to prepare it again")
        return
    family = f", {result.split_family} split family" if result.split_family else ""
    _say(f"prepared {out} ({protocol} protocol{family}) in {result.seconds:.1f} s")
    for name, count in result.counts.items():
        _say(f"  {name:<24} {count:>6} images")
    for note in result.notes:
        _say(f"  note: {note}")


@cli.group("config")
def config_group() -> None:
    """Inspect the settings of a study."""


@config_group.command("show")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="A TOML settings file.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one setting.")
def config_show(config_file: Path | None, overrides: tuple[str, ...]) -> None:
    """Print every setting with its default, source and meaning, as a TOML file you can edit and pass back."""
    from .config import format_config, load_config

    click.echo(format_config(load_config(config_file, list(overrides))), nl=False)


@cli.command()
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="A folder made by `prepare --protocol paper`, or `--protocol standard` (then set "
                   "study.labeled_subset).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The study folder (created or continued).")
@click.option("--approaches", default="fdt,ldt,aldt", show_default=True,
              help="Comma-separated approaches to run; all: every baseline and approach (the full paper study).")
@click.option("--runs", type=click.IntRange(1), default=None, help="Runs per approach [study.runs, default 3].")
@click.option("--models", type=click.IntRange(1), default=None, help="Models per baseline group [study.models, default 10].")
@click.option("--config", "config_files", type=click.Path(path_type=Path), multiple=True,
              help="A TOML settings file (repeatable: later files override earlier ones).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one setting, e.g. --set train.epochs=5 (repeatable; see `config show`).")
@click.option("--save-predictions", is_flag=True, help="Write every model's predictions as official-format PNGs.")
@click.option("--executor", type=click.Choice(["serial", "local", "ray"]), default="serial", show_default=True,
              help="Where tasks run: here one after another, N processes of this machine, or a Ray cluster.")
@click.option("--parallel", type=click.IntRange(1), default=2, show_default=True,
              help="--executor local: tasks at once (they share the cores, or the GPU).")
@click.option("--ray-address", default=None, help="--executor ray: auto or HOST:PORT of a running cluster "
              "[default: start a local instance for this call]")
@click.option("--cpus-per-task", type=click.FloatRange(0), default=1.0, show_default=True,
              help="--executor ray: CPUs each task reserves.")
@click.option("--gpus-per-task", type=click.FloatRange(0), default=0.0, show_default=True,
              help="--executor ray: GPUs (or a fraction) each task reserves.")
@click.option("--plan", "plan_only", is_flag=True, help="Print the tasks, trainings, images and estimated time; "
              "train nothing.")
@click.option("--throughput", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--plan: images/s of one training [default: measured by a short probe here].")
@click.option("--throughput-all", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--plan with --executor local or ray: images/s of all the tasks at once together (e.g. "
              "benchmarks/gpu_check.sh's 'images/s all at once' for that --parallel), for the layout's wall time.")
def study(data: Path, out: Path, approaches: str, runs: int | None, models: int | None, config_files: tuple[Path, ...],
          overrides: tuple[str, ...], save_predictions: bool, executor: str, parallel: int, ray_address: str | None,
          cpus_per_task: float, gpus_per_task: float, plan_only: bool, throughput: float | None,
          throughput_all: float | None) -> None:
    """Train and score every group of the chosen approaches; rerun the same command to continue after a stop."""
    from .config import load_config
    from .semisup.study import describe_plan, run_study

    extra = [f"study.runs={runs}"] * (runs is not None) + [f"study.models={models}"] * (models is not None)
    extra += ["study.save_predictions=true"] * save_predictions
    config = load_config(list(config_files), list(overrides) + extra)
    names = [a.strip().lower() for a in approaches.split(",") if a.strip()]
    if plan_only:
        _say(describe_plan(data, out, names, config, throughput, executor, parallel, gpus_per_task,
                           throughput_all))
        return
    summary = run_study(data, out, names, config, log=_say, executor=executor, parallel=parallel,
                        ray_address=ray_address, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task)
    _say(f"study {out}: {summary.trained} trainings run now, {summary.skipped} already finished, "
         f"{summary.failed} failed, {summary.groups} groups")
    _say(f"results: {out}/results.sqlite; report: cityscapes-lab report {out}")


@cli.command()
@click.option("--pred", "pred_dir", type=click.Path(path_type=Path), required=True,
              help="Folder of labelId PNGs whose names contain <city>_<seq>_<frame>.")
@click.option("--gt", "gt_dir", type=click.Path(path_type=Path), required=True,
              help="Folder searched for *_gtFine_labelIds.png (and *_gtFine_instanceIds.png).")
@click.option("--json", "json_file", type=click.Path(path_type=Path), default=None, help="Write the scores here.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes [default: all cores].")
def evaluate(pred_dir: Path, gt_dir: Path, json_file: Path | None, workers: int | None) -> None:
    """Official Cityscapes pixel-level scores (mIoU, iIoU, category scores), equal to cityscapesscripts'."""
    import math

    from .metrics.folders import evaluate_folders
    from .outputs import check_output_file

    if json_file:
        check_output_file(json_file, option="--json")
    result = evaluate_folders(pred_dir, gt_dir, workers=workers)
    scores = result.scores.as_dict()
    for name, value in result.scores.class_iou.items():
        iiou = result.scores.class_iiou[name]
        _say(f"  {name:<14} IoU {value:6.3f}" + ("" if math.isnan(iiou) else f"   iIoU {iiou:6.3f}"))
    _say(f"{result.images} images: mIoU {scores['mIoU']:.4f}  iIoU {scores['iIoU']:.4f}  "
         f"category mIoU {scores['category_mIoU']:.4f}  category iIoU {scores['category_iIoU']:.4f}")
    for warning in result.warnings:
        _warn(f"{pred_dir}: {warning}")
    if json_file:
        _write_json(json_file, scores)


def _write_json(path: Path, payload: dict) -> None:
    """Strict JSON (NaN -> null), atomically, creating the file's folder if needed."""
    import json

    from . import atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, json.loads(json.dumps(payload), parse_constant=lambda constant: None))
    _say(f"wrote {path}")


@cli.command()
@click.argument("runs", type=click.Path(path_type=Path))
def report(runs: Path) -> None:
    """Write the results table (Markdown, CSV), the figure and a picture panel of the study in RUNS."""
    from .report import write_report

    files = write_report(runs)
    for path in (files.table_md, files.table_csv, files.figure, files.panel):
        if path is not None:
            _say(f"wrote {path}")


@cli.command("export-png")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the PNGs.")
def export_png(folder: Path, out: Path) -> None:
    """Write a derived training set (e.g. RUNS/datasets/im/run1/n2/gen0/pairs or .../set) as PNGs in the study's
    layout: images/, masks/ and, for IM pairs, im/ (the inconsistency mask)."""
    from .data.arrays import export_png as export

    _say(f"wrote {export(folder, out)} pairs to {out}")


@cli.group()
def zoo() -> None:
    """Published Cityscapes models: their numbers, checkpoints and evaluation protocols."""


@zoo.command("list")
def zoo_list() -> None:
    """Every registered model, its published number, what the number is, and the file to download."""
    from .models.registry import MODELS, UNAVAILABLE

    for name, spec in MODELS.items():
        _say(f"{name}: {spec.description} [{spec.licence}]")
        for w in spec.weights:
            _say(f"  {w.miou:6.2f}  {w.number}; trained on {w.training_data}; reproduce with --protocol "
                 f"{w.protocol}")
            _say(f"          {w.file}  <- {w.url}" + (f"  ({w.note})" if w.note else ""))
    for model in UNAVAILABLE:
        _say(f"{model.name}: not runnable: {model.reason}")
        for variant, miou, what in model.rows:
            _say(f"  {miou:6.2f}  {variant}: {what}")


# engine.prediction.PROTOCOLS (kept here so that the command line starts without importing torch)
PROTOCOL_NAMES = ["whole", "slide", "ms-flip", "slide-unimatch-v1", "slide-shifted", "center-crop"]
PROTOCOL_HELP = ("whole: one forward pass; slide: the model's windows, logits averaged; ms-flip: scales 0.5-1.75 + "
                 "flip; slide-unimatch-v1: UniMatch V1's 801 windows every 534, edge windows truncated, softmax "
                 "summed; slide-shifted: the same with the last window shifted back to the border (UniMatch V2); "
                 "center-crop: U2PL's 769x769 centre crop, only it scored.")
WINDOW_HELP = ("slide-unimatch-v1 / slide-shifted: the square window (stride 2/3 of it) [default: 801; UniMatch V2's "
               "DINOv2 models: 798]; center-crop: the crop [default: 769].")


@zoo.command("eval")
@click.argument("name")
@click.option("--weights", type=click.Path(path_type=Path), required=True, help="The published checkpoint file.")
@click.option("--data", "raw", type=click.Path(path_type=Path), required=True,
              help="The raw download (extracted or the official zips), as for `prepare --raw`.")
@click.option("--split", default="val", show_default=True, help="The split to score.")
@click.option("--protocol", type=click.Choice(PROTOCOL_NAMES), default="whole", show_default=True,
              help=PROTOCOL_HELP)
@click.option("--window", type=click.IntRange(16), default=None, help=WINDOW_HELP)
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N images.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "auto"]), default="fp32", show_default=True,
              help="fp32: as the published numbers were made; bf16 (autocast, on a GPU) is the fast path; auto: bf16 "
                   "on a GPU, fp32 on the CPU.")
@click.option("--json", "json_file", type=click.Path(path_type=Path), default=None,
              help="Write the scores here, with the weights file's size and sha256.")
def zoo_eval(name: str, weights: Path, raw: Path, split: str, protocol: str, window: int | None, limit: int | None,
             device: str, precision: str, json_file: Path | None) -> None:
    """Score a published model on the raw download at the original resolution (official metrics)."""
    from .engine.prediction import load_predictor
    from .engine.zoo_eval import check_split, evaluate_on_raw
    from .outputs import check_output_file

    check_split(split)
    if json_file:
        check_output_file(json_file, option="--json")
    predictor = load_predictor(name, weights, protocol, device, precision, window=window)
    result = evaluate_on_raw(predictor, raw, split, limit)
    scores, runtime = result.scores.as_dict(), predictor.runtime
    _say(f"{name} on {split} ({result.images} images, {protocol}): mIoU {scores['mIoU']:.4f}  iIoU {scores['iIoU']:.4f}"
         f"  category mIoU {scores['category_mIoU']:.4f}  ({result.seconds_per_image:.2f} s per image on "
         f"{runtime.device.type}, {runtime.precision})")
    if json_file:
        _write_json(json_file, {**predictor.describe(), "split": split, "protocol": protocol, "window": window,
                                "images": result.images, "seconds_per_image": result.seconds_per_image, **scores})


@cli.command()
@click.option("--model", "name", default=None,
              help="A registered model (see `cityscapes-lab zoo list`); optional with our checkpoints, which name theirs.")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="A published checkpoint, or one of ours (best.pt / top1.pt; it names its model).")
@click.option("--random-weights", is_flag=True, help="Predict without --weights (random weights), to try the pipeline.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the outputs.")
@click.option("--protocol", type=click.Choice(PROTOCOL_NAMES), default="whole", show_default=True,
              help=PROTOCOL_HELP)
@click.option("--window", type=click.IntRange(16), default=None, help=WINDOW_HELP)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on a GPU (fast), fp32 on the CPU; fp32 for the published numerics.")
@click.option("--no-color", is_flag=True, help="Skip the colour PNGs.")
@click.option("--no-overlay", is_flag=True, help="Skip the overlays.")
@click.option("--json", "json_file", type=click.Path(path_type=Path), default=None,
              help="Write what produced the predictions here: model, weights file (size, sha256), protocol, device.")
def predict(name: str | None, weights: Path | None, random_weights: bool, inputs: tuple[Path, ...], out: Path,
            protocol: str, window: int | None, device: str, precision: str, no_color: bool, no_overlay: bool,
            json_file: Path | None) -> None:
    """Segment images, folders of images and videos: labelIds PNGs (official submission format), colour PNGs
    and overlays in OUT."""
    from .engine.prediction import check_prediction_output, collect_inputs, load_predictor, predict_files

    from .outputs import check_output_file

    check_prediction_output(out, list(inputs))
    if json_file:
        check_output_file(json_file, option="--json")
    collect_inputs(list(inputs))  # a missing input fails before the model loads
    predictor = load_predictor(name, weights, protocol, device, precision, random_weights=random_weights,
                               window=window)
    count = predict_files(predictor, list(inputs), out, colour=not no_color, overlays=not no_overlay)
    if json_file:
        _write_json(json_file, {**predictor.describe(), "protocol": protocol, "window": window, "predictions": count,
                                "out": str(out)})
    _say(f"wrote {count} predictions to {out}/labelIds (submission format)"
         + ("" if no_color else ", color") + ("" if no_overlay else ", overlay"))


def _note_load(threads: int) -> None:
    """A line when other programs compete for the cores that ``threads`` training threads will use."""
    from .engine.runtime import load_note

    note = load_note(threads)
    if note:
        _say(f"note: {note}")


def _options(items: tuple[str, ...]) -> dict:
    """``key=value`` model options; values read as JSON where they parse (numbers, true/false), else text."""
    import json

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected key=value, e.g. alpha=0.5")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


@cli.command()
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="A folder made by `prepare --protocol standard`.")
@click.option("--model", "name", default=None,
              help="A registered model (see `cityscapes-lab zoo list`)  [default: the setting train.model]")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="Start from this checkpoint.")
@click.option("--option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="A model option (alpha: instead of the setting train.alpha).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for checkpoints and curves.")
@click.option("--split", "train_split", default="train", show_default=True, help="The split to train on.")
@click.option("--val-split", default="val", show_default=True)
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="A TOML settings file.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one setting.")
@click.option("--seed", type=int, default=0, show_default=True)
def train(data: Path, name: str | None, weights: Path | None, model_options: tuple[str, ...], out: Path, train_split: str,
          val_split: str, config_file: Path | None, overrides: tuple[str, ...], seed: int) -> None:
    """Train or fine-tune any registered model on the standard protocol; with `torchrun --nproc_per_node=N -m
    cityscapes_lab train ...` on N GPUs (or CPU processes) with DistributedDataParallel."""
    import torch

    from .config import load_config
    from .data.prepared import load_prepared
    from .engine.runtime import join_processes
    from .engine.standard import check_same_training, record_training, training_identity, train_standard
    from .models.registry import training_model
    from .outputs import check_output_folder, holds_only

    config = load_config(config_file, list(overrides))
    name = name or config.train.model
    prepared = load_prepared(data)
    if prepared.protocol != "standard":
        raise ConfigError(f"{data}: `train` uses the standard protocol (19 trainIds); this folder is "
                          f"{prepared.protocol}; prepare with --protocol standard (use `study` for the paper protocol)")
    for split, option in ((train_split, "--split"), (val_split, "--val-split")):
        prepared.labeled_split(split, option)
    check_output_folder(out, what="a training (run.json, best.pt, last.pt, result.json)", inputs=[data],
                        ours=holds_only("run.json", "best.pt", "last.pt", "result.json"))
    identity = training_identity(config, prepared, name, _options(model_options), weights, train_split, val_split,
                                 seed)
    check_same_training(out, config, identity)
    runtime = join_processes(config.train)
    torch.manual_seed(seed)
    model, options = training_model(config.train, prepared.num_classes, name, _options(model_options), weights)
    if runtime.main:
        Path(out).mkdir(parents=True, exist_ok=True)
        record_training(out, identity)
        if runtime.device.type == "cpu":
            _note_load(torch.get_num_threads())
    summary = train_standard(name, model, options, prepared, config, out, runtime, train_split, val_split, seed)
    if runtime.main:
        _say(f"trained {name} on {train_split} with {summary['world_size']} process(es): best val mIoU "
             f"{summary['best_val_miou']:.4f}; checkpoint {out}/best.pt")
    if runtime.world_size > 1:
        torch.distributed.destroy_process_group()


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True,
              help="Folder for everything the demo makes.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes [default: all cores].")
def demo(out: Path, workers: int | None) -> None:
    """Run the whole pipeline on generated stand-in data at reduced sizes (minutes on a 2-core CPU)."""
    from .demo import DISCLAIMER, run_demo

    _say(DISCLAIMER)
    result = run_demo(out, workers=workers, log=_say)
    _say("")
    _say(result.report.main_table.strip())
    _say("")
    _say(f"table:  {result.report.table_md}  (and {result.report.table_csv.name})")
    _say(f"figure: {result.report.figure}")
    if result.report.panel is not None:
        _say(f"panel:  {result.report.panel}")
    _say(DISCLAIMER)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and exit code 2, Ctrl-C into exit code 130."""
    no_args_is_help = getattr(click.exceptions, "NoArgsIsHelpError", ())
    try:
        with ctrl_c_recorded():
            code = cli.main(args=argv, prog_name="cityscapes-lab", standalone_mode=False)
    except no_args_is_help as exc:  # a group without a command: its help, as `--help` prints it
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        hint = f" (see: {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) else ""
        click.echo(f"error: {message}{hint}", err=True)
        sys.exit(2)
    except (click.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("interrupted; run the same command again to continue where it stopped", err=True)
        forget_interpreter_mark()
        sys.exit(130)
    except LabError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)  # click returns the code of --help / --version exits
