"""benchmarks/gpu_check.sh rehearsed on the CPU: every stage runs at toy sizes and lands in the one table, so that
a GPU machine, when one is lent, is not spent on a broken stage. The GPU figures themselves need the GPU."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
# in the script's order: what is still unmeasured on a GPU first
STAGES = ["concurrent trainings", "batched group", "pytest -m gpu", "study (cpu, local x2)", "step profile",
          "zoo fp32 vs bf16", "train_step", "standard study (cpu)", "deeplabv3+ step"]


def stage_statuses(output: str) -> dict[str, str]:
    """Stage -> status of the printed table (its first column is empty on a stage's further rows)."""
    statuses = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] and cells[0] != "stage":
            statuses[cells[0]] = cells[3]
    return statuses


def rehearse(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_CHECK_REHEARSE": "1", "GPU_CHECK_PYTHON": sys.executable, "TMPDIR": str(tmp_path),
           "GPU_CHECK_OUT": str(tmp_path / "out"), "HF_HUB_OFFLINE": "1"}
    for name in ("PYTEST_XDIST_WORKER", "GPU_CHECK_STAGES"):
        env.pop(name, None)
    env.update(extra)
    return subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)


def test_every_stage_runs_and_reports_in_a_cpu_rehearsal(tmp_path):
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = hashlib.sha256(results.read_bytes()).hexdigest()
    run = rehearse(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    statuses = stage_statuses(run.stdout)
    assert list(statuses) == STAGES, run.stdout[-3000:]
    failed = {stage: status for stage, status in statuses.items() if not status.startswith("ok")}
    assert not failed, run.stdout[-4000:]
    assert "trainings: 4 done" in run.stdout and "identical" in run.stdout  # the study rows, executors' scores
    # the projection: the full study's plan (made in the background) over the rates of trainings at once
    assert "full study h " in run.stdout and "12 hours need" in run.stdout and "fastest measured" in run.stdout
    assert "with the predicting the plan estimates" in run.stdout
    assert (tmp_path / "out" / "gpu-check-logs.tgz").stat().st_size > 0
    assert hashlib.sha256(results.read_bytes()).hexdigest() == before  # a rehearsal records nothing


def test_gpu_check_stages_runs_only_the_named_stages(tmp_path):
    run = rehearse(tmp_path, GPU_CHECK_STAGES="batched")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert list(stage_statuses(run.stdout)) == ["batched group"], run.stdout[-3000:]
    assert stage_statuses(run.stdout)["batched group"].startswith("ok")


def test_the_projection_adds_the_hours_at_each_rate_of_all_trainings_at_once():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from results import with_projection

    header = ["executor", "images/s all at once", "scores"]
    rows = [["local --parallel 1", "1000.0", "(the reference)"], ["local --parallel 2", "-", "identical"],
            ["local --parallel 4", "3600.0", "identical"]]
    header, rows, notes = with_projection(header, rows, 3600 * 3600)
    assert header == ["executor", "images/s all at once", "full study h", "scores"]
    assert [row[2] for row in rows] == ["3.6", "-", "1.0"]
    assert "12 hours need 300 images/s" in notes[0]
    assert "local --parallel 4, 3,600.0 images/s, 1.0 hours: 12.00x" in notes[1]
    assert with_projection(["executor"], [["serial"]], 10) == (["executor"], [["serial"]], [])
    assert with_projection(header, rows, 3600 * 3600) == (header, rows, [])  # projected once, not twice
    # the plan's predictions (validations, scoring, teachers' labels): a quarter of the training steps' time more
    _, _, notes = with_projection(["executor", "images/s all at once"], [["local --parallel 4", "3600.0"]],
                                  3600 * 3600, predicting=0.25)
    assert "(25.0% of the training steps' time" in notes[2] and "12 hours need 375 images/s" in notes[2]
    assert "the fastest row 1.2 hours" in notes[2]


def test_without_a_cuda_device_it_says_so_and_exits_0():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the real check would run")
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "GPU_CHECK_PYTHON": sys.executable}, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().splitlines() == [
        "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to check"]


def test_the_stacked_group_is_built_on_the_models_device():
    # the models on the GPU and the stacked layers on the CPU failed the batched stage on an H200; the "meta"
    # device stands in for any device other than the CPU default
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from batched_group import stack_models

    from cityscapes_lab.models import build_model

    models = [build_model("unet_paper", 35).to("meta") for _ in range(2)]
    stacked = stack_models(models)
    assert {p.device.type for p in stacked.parameters()} | {b.device.type for b in stacked.buffers()} == {"meta"}
    assert stacked.stem[0][0].in_channels == 2 * models[0].stem[0][0].in_channels == 6


def test_the_profile_sums_kernel_time_per_step_and_names_the_largest():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_profile import kernel_summary

    # 2 steps of 10 ms wall; kernels: conv 3 ms + 3 ms, bn 1 ms + 1 ms, add 2 ms: 10 ms in all, 5 ms per step
    kernels = [("conv", 3000.0), ("bn", 1000.0), ("conv", 3000.0), ("bn", 1000.0), ("add", 2000.0)]
    found = kernel_summary(kernels, steps=2, step_ms=10.0)
    assert found["busy_ms"] == 5.0 and found["busy"] == 0.5 and found["per_step"] == 2.5
    assert found["top"] == [("conv", 0.6), ("bn", 0.2), ("add", 0.2)]  # a tie in the order first seen
    assert kernel_summary(kernels, steps=1, step_ms=5.0)["busy"] == 1.0  # capped: timed and profiled runs differ
