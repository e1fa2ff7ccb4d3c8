"""Helpers of benchmarks/gpu_check.sh: the zoo's fp32 against bf16 inference (time, memory and the share of
pixels whose class differs), and the one summary table of all stages.

    python benchmarks/gpu_concurrent.py zoo [--models hrnet_w48_ocr,upernet_internimage_l] [--size 1024x2048]
                                            [--repeats 3] [--device cuda|cpu] [--weights NAME=PATH] [--json rows.json]
    python benchmarks/gpu_concurrent.py summary WORK_DIR [--device-name NAME] [--no-record]
                                                [--full-study-images N [--full-study-predicting F]]

``zoo`` builds each model (random weights unless --weights names a checkpoint), segments one stand-in frame
(generated at the image size, cached in .bench/) in fp32 (NCHW, torch's default TF32 settings), with bf16
autocast plus channels-last (as zoo_inference.py does) and with bf16 autocast alone, and compares the fp32 and
the bf16 channels-last class maps pixel by pixel.

``summary`` reads WORK_DIR/stages.tsv (one line per stage: name, exit status, seconds, log file, data file, limit) that
gpu_check.sh writes, turns each stage's JSON (or, failing that, the end of its log) into rows, prints one table
and appends it to RESULTS.md. With --full-study-images (the images seen in training of the full study's plan) the
rows of study_throughput.py get the hours of that study at their rate of all the trainings at once.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import add_shared_options, markdown_table, record, timed_steps, with_projection  # noqa: E402


# ---------------------------------------------------------------------------------------------------- zoo


def stand_in_frame(cache: Path, height: int, width: int):
    """One generated street scene of the given size as a (1, 3, H, W) float tensor in 0..1."""
    import cv2
    import torch

    import cityscapes_lab

    raw = cache / f"gpu-check-frame-{width}x{height}"
    cityscapes_lab.synthesize(raw, cityscapes_lab.SynthOptions(
        counts={"train": 0, "val": 1, "test": 0, "train_extra": 0}, width=width, height=height, seed=3), workers=1)
    path = sorted(raw.glob("leftImg8bit/val/*/*_leftImg8bit.png"))[0]
    image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)


def segment(model, image, device, precision: str, channels_last: bool, repeats: int):
    """(class map, median seconds, peak GPU GiB or NaN) of ``repeats`` timed passes after one warm-up."""
    import torch

    from cityscapes_lab.engine.runtime import Runtime

    if channels_last:
        model, image = model.to(memory_format=torch.channels_last), image.contiguous(memory_format=torch.channels_last)
    else:
        model, image = model.to(memory_format=torch.contiguous_format), image.contiguous()
    runtime = Runtime(device, precision)
    classes = None

    @torch.no_grad()
    def step() -> None:
        nonlocal classes
        with runtime.autocast():
            logits = model(image)
        classes = logits.float().argmax(1)

    seconds, peak = timed_steps(step, repeats, device, warmup=1)
    return classes, seconds, peak


def zoo(args: argparse.Namespace) -> None:
    import torch

    from cityscapes_lab.models import build_model

    device = torch.device(args.device)
    height, width = map(int, args.size.lower().split("x"))
    weights = dict(item.split("=", 1) for item in args.weights)
    image = stand_in_frame(args.cache, height, width).to(device)
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, 19, weights=weights.get(name)).to(device).eval()
        fp32, fp32_s, fp32_peak = segment(model, image, device, "fp32", False, args.repeats)
        bf16, bf16_s, bf16_peak = segment(model, image, device, "bf16", True, args.repeats)
        # bf16 in the default layout as well: which of the two changes makes a model faster or slower
        _, nchw_s, nchw_peak = segment(model, image, device, "bf16", False, args.repeats)
        differ = (fp32 != bf16).double().mean().item()
        origin = "published weights" if name in weights else "random weights (seed 0)"
        for label, seconds, peak in (("fp32", fp32_s, fp32_peak), ("bf16 autocast + channels-last", bf16_s, bf16_peak),
                                     ("bf16 autocast, NCHW", nchw_s, nchw_peak)):
            rows.append({"what": f"{name}, {label}", "result": f"{seconds:.3f} s / image ({1 / seconds:.2f} images/s), "
                         f"peak {peak:.2f} GiB"})
        rows.append({"what": f"{name}: pixels whose class differs, fp32 vs bf16",
                     "result": f"{differ * 100:.3f} % of {height}x{width} ({origin})"})
        print(json.dumps(rows[-4:]), flush=True)
        del model, fp32, bf16
        if device.type == "cuda":
            torch.cuda.empty_cache()
    notes = [f"zoo: one stand-in frame {height}x{width}, whole image, median of {args.repeats} after a warm-up; fp32 "
             f"with cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
             f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}; the share of differing pixels depends on the "
             "weights' decision margins: with random weights it says little about trained ones (pass --weights)."]
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "notes": notes}, indent=1))


# ------------------------------------------------------------------------------------------------ summary


def rows_from_log(log: Path) -> list[dict]:
    """Rows a script printed as Python lists before it stopped (train_step.py, study_throughput.py)."""
    rows = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if line.startswith("["):
            try:
                value = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, list):
                rows.append({"what": str(value[0]), "result": ", ".join(map(str, value[1:]))})
    return rows


def rows_from_markdown(path: Path) -> list[dict]:
    """The table rows of a RESULTS.md that a script wrote into a scratch copy of benchmarks/."""
    rows, header = [], None
    for line in path.read_text().splitlines() if path.exists() else []:
        if not line.startswith("|") or line.startswith("|-"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
            continue
        rows.append({"what": cells[0], "result": ", ".join(f"{h} {c}" for h, c in zip(header[1:], cells[1:]))})
    return rows


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] \
        if log.exists() else []
    return lines[-1][:200] if lines else "no output"


def last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] \
        if log.exists() else []
    for line in reversed(lines):
        if "Error" in line or "error" in line or "FAILED" in line or "failed" in line:
            return line[:200]
    return lines[-1][:200] if lines else "no output"


def summary(args: argparse.Namespace) -> None:
    work = Path(args.work)
    table, notes = [], []
    for line in (work / "stages.tsv").read_text().splitlines():
        if not line.strip():
            continue
        stage, rc, seconds, log, data, limit = (line.split("\t") + [""])[:6]
        rc, log, data = int(rc), Path(log), Path(data) if data else None
        status = {0: "ok", 124: f"timed out at its {limit} s limit", 137: f"killed at its {limit} s limit",
                  125: "skipped: no time left"}.get(rc, f"failed (exit {rc})")
        rows = []
        if data is not None and data.suffix == ".json" and data.exists():
            content = json.loads(data.read_text())
            if "header" in content:  # study_throughput.py
                header = content["header"]
                if args.full_study_images:
                    header, content["rows"], projection = with_projection(header, content["rows"],
                                                                          args.full_study_images,
                                                                          args.full_study_predicting)
                    notes += projection
                rows = [{"what": r[0], "result": ", ".join(f"{h} {c}" for h, c in zip(header[1:], r[1:]))}
                        for r in content["rows"]]
            else:
                rows = content["rows"]
            notes += content.get("notes", [])
        elif data is not None and data.suffix == ".md":
            rows = rows_from_markdown(data)
        if not rows:
            rows = rows_from_log(log)
        if not rows:  # e.g. pytest: its last line says how many passed
            rows = [{"what": "-", "result": last_line(log) if rc == 0 else "-"}]
        if rc in (124, 137):
            rows.append({"what": "last output", "result": last_line(log)})
        elif rc != 0 and rc != 125:
            rows.append({"what": "error", "result": last_error(log)})
        for index, row in enumerate(rows):
            table.append([stage if index == 0 else "", row["what"], row["result"].replace("|", "/"),
                          (status if rc == 125 else f"{status}, {float(seconds):.0f} s") if index == 0 else ""])
    notes.append(f"logs of the stages: {work}")
    title, text = f"gpu_check on {args.device_name}", markdown_table(["stage", "what", "result", "status"], table)
    record(title, text, notes, save=not args.no_record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    z = commands.add_parser("zoo", help="fp32 against bf16 inference of zoo models")
    z.add_argument("--models", default="hrnet_w48_ocr,upernet_internimage_l")
    z.add_argument("--size", default="1024x2048", help="HEIGHTxWIDTH")
    z.add_argument("--repeats", type=int, default=3)
    z.add_argument("--weights", action="append", default=[], metavar="NAME=PATH")
    add_shared_options(z, record=False, device=True, json=True, cache=True)  # its rows go to --json only
    s = commands.add_parser("summary", help="the one table of gpu_check.sh")
    s.add_argument("work")
    s.add_argument("--device-name", default="unknown GPU")
    add_shared_options(s)
    s.add_argument("--full-study-images", type=int, default=None,
                   help="images seen in training of the full study's plan: its hours at the concurrent rates")
    s.add_argument("--full-study-predicting", type=float, default=0.0,
                   help="the time of the plan's predictions as a fraction of its training steps' (study --plan)")
    args = parser.parse_args()
    zoo(args) if args.command == "zoo" else summary(args)


if __name__ == "__main__":
    main()
