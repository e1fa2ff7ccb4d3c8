"""The benchmark scripts that gpu_check.sh does not rehearse, run at toy sizes with --no-record: each must run
to its table (a script that falls behind an API change fails here, not on the day its figures are wanted) and
leave RESULTS.md as it was. The figures themselves are not checked: they are measurements."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

# script, toy arguments, a line its table must print
CASES = [
    ("pseudo_label.py", ["--images", "4", "--batch", "2"], "## pseudo_label: teachers labelling 416x208 images"),
    ("zoo_inference.py", ["--models", "hrnet_w48_ocr,upernet_internimage_l", "--size", "64x128"],
     "## zoo_inference: seconds per 64x128 image"),
    ("load_prepared.py", ["--rounds", "1", "--train", "20", "--val", "10"],
     "## load_prepared: the paper protocol, 30 images at 416x208"),
    ("prepare.py", ["--train", "10", "--val", "4", "--rounds", "1"], "| cityscapes-lab prepare "),
    ("evaluate.py", ["--images", "2", "--rounds", "1"], "| cityscapes-lab evaluate "),
]


def digest() -> str:
    return hashlib.sha256(RESULTS.read_bytes()).hexdigest()


@pytest.mark.parametrize("script, arguments, expected", CASES, ids=[case[0] for case in CASES])
def test_the_benchmark_runs_to_its_table_at_a_toy_size(script, arguments, expected, tmp_path):
    before = digest()
    cache = ["--cache", str(tmp_path / "cache")] if script in ("prepare.py", "evaluate.py") else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *arguments, *cache, "--no-record"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert expected in run.stdout, run.stdout[-2000:]
    assert digest() == before  # --no-record wrote nothing


def test_keras_peer_without_the_original_code_says_what_to_give(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "IM_ORIGINAL"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "keras_peer.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "give --original DIR" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "keras_peer.py"), "--original", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "is not a checkout of the original repository" in run.stderr and "Traceback" not in run.stderr


def test_study_throughput_keeps_the_rows_it_finished_when_cut_short(tmp_path, monkeypatch):
    """gpu_check gives each stage a time limit: a run stopped after its first row (here: the second study raises)
    leaves that row in its --json file, for the table."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import study_throughput

    real, calls = study_throughput.run_study, []

    def first_only(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # what a time limit's signal does to the rest of the run
        return real(*args, **kwargs)

    monkeypatch.setattr(study_throughput, "run_study", first_only)
    out = tmp_path / "rows.json"
    monkeypatch.setattr(sys, "argv", ["study_throughput.py", "--waves", "--parallel", "1,2", "--train", "8", "--val",
                                      "4", "--size", "256x128", "--epochs", "1", "--batch", "4", "--cache",
                                      str(tmp_path / "cache"), "--json", str(out), "--no-record"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch

    threads = torch.get_num_threads()  # the tests after this one in this process keep their thread count
    try:
        with pytest.raises(KeyboardInterrupt):
            study_throughput.main()
    finally:
        torch.set_num_threads(threads)
    written = json.loads(out.read_text())
    assert [row[0] for row in written["rows"]] == ["local --parallel 1"]
    assert written["rows"][0][2] == "1 done, 0 failed" and written["notes"] == ["cut short: 1 of 3 rows"]
