"""The ``cityscapes-lab`` command line: the only place that parses arguments, prints errors and picks exit codes.

Every command is a thin wrapper over the Python API. A LabError (bad input, bad settings) becomes one line,
``error: <what and how to fix it>``, and exit code 2, without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .errors import ConfigError, LabError


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="cityscapes-lab")
def cli() -> None:
    """Semantic segmentation on Cityscapes with few labels: data, the Inconsistency-Masks study, evaluation."""


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--train", "n_train", type=click.IntRange(0), default=100, show_default=True, help="Train images.")
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
def synth(out: Path, n_train: int, n_val: int, n_test: int, n_extra: int, size: str, seed: int, as_zips: bool,
          workers: int | None, force: bool) -> None:
    """Generate Cityscapes-format stand-in data (street scenes drawn procedurally) into OUT.

    OUT gets the official layout: leftImg8bit/<split>/<city>/<id>_leftImg8bit.png and
    gtFine/<split>/<city>/<id>_gtFine_{labelIds,instanceIds,color}.png and _polygons.json.
    """
    from .data.synth import SynthOptions, synthesize

    width, height = _size(size)
    options = SynthOptions(counts={"train": n_train, "val": n_val, "test": n_test, "train_extra": n_extra},
                           width=width, height=height, seed=seed, as_zips=as_zips)
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
@click.option("--fractions", default="1/16,1/8,1/4,1/2", show_default=True,
              help="[standard] Labeled subsets of train to list, comma-separated.")
@click.option("--subset-seed", type=int, default=0, show_default=True, help="[standard] Seed of the subsets.")
@click.option("--labeled-list", type=click.Path(path_type=Path), default=None,
              help="[standard] A file naming the labeled train images, one per line (e.g. a U2PL list).")
@click.option("--coarse", is_flag=True, help="[standard] Include train_extra with its gtCoarse labels.")
@click.option("--export-png", is_flag=True, help="Also write <split>/images/<id>.png and <split>/masks/<id>.png.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes [default: all cores].")
@click.option("--force", is_flag=True, help="Rebuild a complete OUT.")
def prepare(raw: Path, out: Path, protocol: str, labeled_fraction: float, split_seed: int, size: str | None,
            fractions: str, subset_seed: int, labeled_list: Path | None, coarse: bool, export_png: bool,
            workers: int | None, force: bool) -> None:
    """Validate the raw download and prepare it for a protocol: resized, relabelled arrays and split lists."""
    from .data.prepare import PrepareOptions, prepare as run_prepare

    if protocol == "paper" and (size or coarse or labeled_list):
        raise ConfigError("--size, --coarse and --labeled-list apply to --protocol standard; the paper protocol "
                          "follows the study exactly")
    options = PrepareOptions(
        protocol=protocol, labeled_fraction=labeled_fraction, split_seed=split_seed, size=_size(size),
        fractions=tuple(f.strip() for f in fractions.split(",") if f.strip()), subset_seed=subset_seed,
        labeled_list=str(labeled_list) if labeled_list else None, coarse=coarse, export_png=export_png)
    result = run_prepare(raw, out, options, workers=workers, force=force)
    if result.skipped:
        _say(f"{out} is already complete; pass --force to prepare it again")
        return
    _say(f"prepared {out} ({protocol} protocol) in {result.seconds:.1f} s")
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
@click.option("--data", type=click.Path(path_type=Path), required=True, help="A folder made by `prepare --protocol paper`.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The study folder (created or continued).")
@click.option("--approaches", default="fdt,ldt,aldt", show_default=True, help="Comma-separated approaches to run.")
@click.option("--runs", type=click.IntRange(1), default=None, help="Runs per approach [study.runs, default 3].")
@click.option("--models", type=click.IntRange(1), default=None, help="Models per baseline group [study.models, default 10].")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="A TOML settings file.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one setting, e.g. --set train.epochs=5 (repeatable; see `config show`).")
@click.option("--save-predictions", is_flag=True, help="Write every model's predictions as official-format PNGs.")
def study(data: Path, out: Path, approaches: str, runs: int | None, models: int | None, config_file: Path | None,
          overrides: tuple[str, ...], save_predictions: bool) -> None:
    """Train and score every group of the chosen approaches; rerun the same command to continue after a stop."""
    from .config import load_config
    from .study.runner import run_study

    extra = [f"study.runs={runs}"] * (runs is not None) + [f"study.models={models}"] * (models is not None)
    extra += ["study.save_predictions=true"] * save_predictions
    config = load_config(config_file, list(overrides) + extra)
    names = [a.strip().lower() for a in approaches.split(",") if a.strip()]
    summary = run_study(data, out, names, config, log=_say)
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
    import json
    import math

    from . import atomic
    from .metrics.folders import evaluate_folders

    result = evaluate_folders(pred_dir, gt_dir, workers=workers)
    scores = result.scores.as_dict()
    for name, value in result.scores.class_iou.items():
        iiou = result.scores.class_iiou[name]
        _say(f"  {name:<14} IoU {value:6.3f}" + ("" if math.isnan(iiou) else f"   iIoU {iiou:6.3f}"))
    _say(f"{result.images} images: mIoU {scores['mIoU']:.4f}  iIoU {scores['iIoU']:.4f}  "
         f"category mIoU {scores['category_mIoU']:.4f}  category iIoU {scores['category_iIoU']:.4f}")
    if json_file:
        clean = json.loads(json.dumps(scores), parse_constant=lambda c: None)  # NaN -> null: strict JSON
        atomic.write_json(json_file, clean)
        _say(f"wrote {json_file}")


@cli.command()
@click.argument("runs", type=click.Path(path_type=Path))
def report(runs: Path) -> None:
    """Write the results table (Markdown, CSV), the figure and a picture panel of the study in RUNS."""
    from .report import write_report

    files = write_report(runs)
    for path in (files.table_md, files.table_csv, files.figure, files.panel):
        if path is not None:
            _say(f"wrote {path}")


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
    _say(result.report.table_md.read_text().split("\n\n", 3)[-1].split("\n## ")[0].strip())  # the main table
    _say("")
    _say(f"table:  {result.report.table_md}  (and {result.report.table_csv.name})")
    _say(f"figure: {result.report.figure}")
    if result.report.panel is not None:
        _say(f"panel:  {result.report.panel}")
    _say(DISCLAIMER)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and exit code 2."""
    try:
        code = cli.main(args=argv, prog_name="cityscapes-lab", standalone_mode=False)
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        hint = f" (see: {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) else ""
        click.echo(f"error: {message}{hint}", err=True)
        sys.exit(2)
    except click.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(1)
    except LabError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted; run the same command again to continue where it stopped", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)  # click returns the code of --help / --version exits
