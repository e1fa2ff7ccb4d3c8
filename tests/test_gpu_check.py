"""benchmarks/gpu_check.sh rehearsed on the CPU: every stage runs at toy sizes and lands in the one table, so that
a GPU machine, when one is lent, is not spent on a broken stage. The GPU figures themselves need the GPU."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
STAGES = ["pytest -m gpu", "study (cpu, local x2)", "standard study (cpu)", "train_step", "zoo fp32 vs bf16",
          "concurrent trainings", "batched group", "deeplabv3+ step"]


def stage_statuses(output: str) -> dict[str, str]:
    """Stage -> status of the printed table (its first column is empty on a stage's further rows)."""
    statuses = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] and cells[0] != "stage":
            statuses[cells[0]] = cells[3]
    return statuses


def test_every_stage_runs_and_reports_in_a_cpu_rehearsal(tmp_path):
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = hashlib.sha256(results.read_bytes()).hexdigest()
    env = {**os.environ, "GPU_CHECK_REHEARSE": "1", "GPU_CHECK_PYTHON": sys.executable, "TMPDIR": str(tmp_path),
           "GPU_CHECK_OUT": str(tmp_path / "out"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    statuses = stage_statuses(run.stdout)
    assert list(statuses) == STAGES, run.stdout[-3000:]
    failed = {stage: status for stage, status in statuses.items() if not status.startswith("ok")}
    assert not failed, run.stdout[-4000:]
    assert "trainings: 4 done" in run.stdout and "identical" in run.stdout  # the study rows, executors' scores
    assert "full study h at 64x32" in run.stdout  # the projection from the plan made in the background
    assert (tmp_path / "out" / "gpu-check-logs.tgz").stat().st_size > 0
    assert hashlib.sha256(results.read_bytes()).hexdigest() == before  # a rehearsal records nothing


def test_without_a_cuda_device_it_says_so_and_exits_0():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the real check would run")
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "GPU_CHECK_PYTHON": sys.executable}, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().splitlines() == [
        "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to check"]
