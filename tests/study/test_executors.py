"""The study on its executors: the same scores serially, on 2 local processes and on Ray; kills of the driver and
of a Ray worker; Ctrl-C, and executors closed while their tasks run; a step that fails for good; two drivers on
one folder; the plan."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cityscapes_lab.config import load_config
from cityscapes_lab.errors import ConfigError, DataError
from cityscapes_lab.semisup.study import run_study
from cityscapes_lab.study.executors import make_executor, start_local_ray
from cityscapes_lab.study.store import ResultStore

# LDT and two IM generations: baselines, pseudo-labelling, generations, rankings (threads fixed: on the CPU the
# thread count changes the rounding, and the executors give each task its share of the cores)
TINY = ["study.runs=1", "study.models=2", "study.top_k=2", "train.epochs=2", "train.batch_size=2", "train.threads=1",
        "semisup.students=2", "semisup.generations=2", "semisup.n=2", "study.eval_splits=val"]


def scores(folder) -> dict:
    with ResultStore(folder / "results.sqlite") as store:
        return {row.key: (row.status, store.scores(row.key)) for row in store.trainings()}


@pytest.fixture(scope="module")
def serial_scores(tiny_paper, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "study"
    summary = run_study(tiny_paper, out, ["im"], load_config(overrides=TINY), show_progress=False)
    assert (summary.trained, summary.failed) == (6, 0)
    return scores(out)


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    # one GPU declared (none is here): tasks that ask for a share of one are scheduled, and told their share
    start_local_ray(num_cpus=2, num_gpus=1)
    yield ray
    ray.shutdown()


_OWN_RAY_INSTANCE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from processes import listening_sockets
from cityscapes_lab.study.executors import make_executor
executor = make_executor("ray")  # no address: it starts a local instance of its own
try:
    ray = executor.ray
    ray.get(ray.remote(lambda: os.getpid()).remote())  # a worker process started, and listening too
    print(json.dumps([[str(address), port, pid] for address, port, pid in listening_sockets(os.getpid())]))
finally:
    executor.close()
"""


def test_the_ray_executor_given_no_address_starts_an_instance_on_loopback_only():
    import ipaddress

    pytest.importorskip("ray")
    # in a process of its own: this one may already be connected to the module's instance
    result = subprocess.run([sys.executable, "-c", _OWN_RAY_INSTANCE, os.path.dirname(os.path.dirname(__file__))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    sockets = json.loads(result.stdout.strip().splitlines()[-1])
    assert len({pid for *_, pid in sockets}) >= 4, sockets  # the driver, the GCS, the raylet, the worker
    assert all(ipaddress.ip_address(address).is_loopback for address, *_ in sockets), sockets


def gpu_shares(out) -> set[float]:
    """The GPU shares the study's trainings ran with (each one's ``worker.json``)."""
    return {json.loads(p.read_text())["gpu_share"] for p in out.glob("models/**/worker.json")}


def test_local_processes_give_the_serial_scores(tiny_paper, tmp_path, serial_scores):
    summary = run_study(tiny_paper, tmp_path / "study", ["im"], load_config(overrides=TINY), show_progress=False,
                        executor="local", parallel=2)
    assert (summary.trained, summary.failed) == (6, 0)
    assert scores(tmp_path / "study") == serial_scores
    assert gpu_shares(tmp_path / "study") == {0.5}  # on a GPU, each of the 2 processes takes half its memory
    # continued with study.keep_datasets=false (not a result setting): the finished generations' sets go
    sets = tmp_path / "study" / "datasets" / "im" / "run1" / "n2"
    assert (sets / "gen0" / "set").exists() and (sets / "gen1" / "pairs").exists()
    dropping = load_config(overrides=TINY + ["study.keep_datasets=false"])
    again = run_study(tiny_paper, tmp_path / "study", ["im"], dropping, show_progress=False)
    assert (again.trained, again.skipped) == (0, 6) and scores(tmp_path / "study") == serial_scores
    assert [sorted(p.name for p in (sets / g).iterdir()) for g in ("gen0", "gen1")] == [["stats.json"]] * 2


def test_on_several_gpus_the_local_workers_spread_over_them(tiny_paper, tmp_path, serial_scores, monkeypatch):
    """The workers' GPUs as a machine with 2 would give them (this one has none: the trainings run on the CPU, and
    each records the GPU and share it was given)."""
    from cityscapes_lab.semisup import study

    monkeypatch.setattr(study, "worker_gpus", lambda device: ["0", "1"])
    summary = run_study(tiny_paper, tmp_path / "study", ["im"], load_config(overrides=TINY), show_progress=False,
                        executor="local", parallel=3)
    assert (summary.trained, summary.failed) == (6, 0) and scores(tmp_path / "study") == serial_scores
    workers = [json.loads(p.read_text()) for p in (tmp_path / "study").glob("models/**/worker.json")]
    assert {(w["cuda_visible_devices"], w["gpu_share"]) for w in workers} <= {("0", 0.5), ("1", 1.0)}
    assert len({w["cuda_visible_devices"] for w in workers}) == 2


def test_ray_gives_the_serial_scores_and_retries_a_killed_worker(tiny_paper, tmp_path, serial_scores, ray_instance):
    """A Ray worker killed (kill -9) during a training: Ray runs the task again, it resumes from its last epoch
    checkpoint, and the study ends with the scores of the serial one. Its tasks leave train.threads at 0: each
    takes the CPU Ray reserved for it (--cpus-per-task 1), not all of the node's cores, so the scores are those of
    a serial study with one thread."""
    settings = TINY + ["train.epochs=6"]  # long enough to be caught between two epochs
    out = tmp_path / "study"
    outcome = {}
    unset = load_config(overrides=[s for s in settings if s != "train.threads=1"])
    assert unset.train.threads == 0
    thread = threading.Thread(target=lambda: outcome.update(summary=run_study(
        tiny_paper, out, ["ldt"], unset, show_progress=False, executor="ray", cpus_per_task=1)))
    thread.start()
    victim, deadline = None, time.time() + 120
    while victim is None and time.time() < deadline and thread.is_alive():
        for folder in sorted((out / "models").glob("ldt/run1/gen0/m*")) if (out / "models").exists() else []:
            if (folder / "last.pt").exists() and (folder / "worker.json").exists():
                victim = folder
                break
        time.sleep(0.02)
    assert victim is not None, "no training reached its first epoch checkpoint"
    first = json.loads((victim / "worker.json").read_text())["pid"]
    os.kill(first, signal.SIGKILL)
    thread.join(300)
    assert outcome["summary"].failed == 0
    worker = json.loads((victim / "worker.json").read_text())
    assert worker["pid"] != first and worker["threads"] == 1  # run again by another worker, on its one CPU
    clean = tmp_path / "clean"
    run_study(tiny_paper, clean, ["ldt"], load_config(overrides=settings), show_progress=False)
    assert scores(out) == scores(clean)
    history = (victim / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 6
    assert gpu_shares(out) == {1.0}
    third = tmp_path / "ray-im"  # a share of the declared GPU each: the tasks are told it (they train on the CPU)
    run_study(tiny_paper, third, ["im"], load_config(overrides=TINY), show_progress=False, executor="ray",
              gpus_per_task=0.5)
    assert scores(third) == serial_scores
    assert gpu_shares(third) == {0.5}


def local_ldt_study(data, out, settings: list[str]) -> list[str]:
    """The command line of an LDT study on 2 local workers."""
    command = [sys.executable, "-m", "cityscapes_lab", "study", "--data", str(data), "--out", str(out),
               "--approaches", "ldt", "--executor", "local", "--parallel", "2"]
    return command + [x for s in settings for x in ("--set", s)]


def test_driver_killed_while_two_tasks_run_then_continued(tiny_paper, tmp_path):
    """kill -9 of the driver while its two local workers train: the workers die with it; the same command
    continues (finished trainings are kept, interrupted ones resume) and ends with a clean study's scores."""
    settings = TINY + ["train.epochs=8"]
    out = tmp_path / "study"
    command = local_ldt_study(tiny_paper, out, settings)
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None:  # both trainings run, one has an epoch checkpoint
        members = list(out.glob("models/ldt/run1/gen0/m*"))
        if len([m for m in members if (m / "worker.json").exists()]) == 2 and any(
                (m / "last.pt").exists() for m in members):
            break
        time.sleep(0.01)
    driver.kill()
    driver.wait()
    workers = [json.loads(p.read_text())["pid"] for p in out.glob("models/ldt/run1/gen0/m*/worker.json")]
    time.sleep(1)
    assert len(workers) == 2 and not [pid for pid in workers if _alive(pid)]  # they died with their driver
    with ResultStore(out / "results.sqlite") as store:
        assert [row.status for row in store.trainings()] == ["running", "running"]
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    clean = tmp_path / "clean"
    run_study(tiny_paper, clean, ["ldt"], load_config(overrides=settings), show_progress=False)
    assert scores(out) == scores(clean)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_ctrl_c_stops_a_local_study_at_once_not_after_its_running_trainings(tiny_paper, tmp_path):
    """Ctrl-C (to the whole process group, as a terminal sends it) while two local workers train: the study exits
    130 within seconds, although its trainings had minutes to go, and no worker runs on."""
    from processes import as_from_a_terminal

    out = tmp_path / "study"
    driver = subprocess.Popen(local_ldt_study(tiny_paper, out, TINY + ["train.epochs=2000"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                              preexec_fn=as_from_a_terminal)
    members = lambda: [m for m in out.glob("models/ldt/run1/gen0/m*") if (m / "last.pt").exists()]
    try:
        deadline = time.time() + 120
        while len(members()) < 2 and time.time() < deadline and driver.poll() is None:
            time.sleep(0.01)
        assert len(members()) == 2, "the two trainings did not reach their first epoch checkpoint"
        workers = [json.loads((m / "worker.json").read_text())["pid"] for m in members()]
        os.killpg(driver.pid, signal.SIGINT)
        started = time.monotonic()
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, err[-2000:]
    assert time.monotonic() - started < 30  # 2,000 epochs each: they had minutes to go
    assert not [pid for pid in workers if _alive(pid)]
    assert not list(out.rglob("*.tmp*"))  # the trainings unwound: no temporary file is left


def test_closing_the_local_executor_stops_its_running_tasks(tmp_path, monkeypatch):
    """Closed while its tasks run (a study stopped by Ctrl-C or an error), the local executor does not wait for
    them to end: it stops them, and each unwinds first (so that it removes its temporary files)."""
    from processes import RunUntilStopped, wait_for_start

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the workers import processes
    executor = make_executor("local", parallel=2)
    markers = [str(tmp_path / f"task{k}") for k in range(2)]
    for marker in markers:
        executor.submit(RunUntilStopped(marker))
    wait_for_start(markers)
    started = time.monotonic()
    executor.close()
    assert time.monotonic() - started < 30  # the tasks run for 2 minutes
    assert [Path(m).read_text() for m in markers] == ["unwound"] * 2


def test_closing_the_ray_executor_cancels_its_running_tasks(tmp_path, ray_instance):
    """On a Ray instance that outlives the study (the caller's own, or a cluster), tasks left running by a stopped
    study are cancelled, not left to train on beside the study run again; each unwinds first."""
    import processes
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(processes)  # Ray's workers cannot import the tests' modules
    try:
        executor = make_executor("ray")  # Ray runs already (the module's instance): this executor only connects
        marker = str(tmp_path / "task")
        executor.submit(processes.RunUntilStopped(marker))
        processes.wait_for_start([marker])
        started = time.monotonic()
        executor.close()
    finally:
        cloudpickle.unregister_pickle_by_value(processes)
    assert time.monotonic() - started < 30
    deadline = time.monotonic() + 10
    while not Path(marker).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Path(marker).read_text() == "unwound"
    assert ray_instance.is_initialized()  # the instance was not this executor's to stop

def test_a_step_that_fails_for_good_fails_its_trainings_and_the_study_goes_on(tiny_paper, tmp_path, monkeypatch):
    """The pseudo-labelling of IM's first generation meets a corrupt input: that generation's students (and the
    next generation, which waits for it) are recorded as failed with the reason, the rest is finished, and the
    report lists what failed."""
    from cityscapes_lab.report import write_report
    from cityscapes_lab.semisup import tasks

    def corrupt(task):
        raise DataError(f"{task.teachers[0]}: not a readable PyTorch checkpoint (truncated); write it again")

    monkeypatch.setattr(tasks.SetTask, "run", corrupt)
    summary = run_study(tiny_paper, tmp_path / "study", ["im"], load_config(overrides=TINY), show_progress=False)
    assert (summary.trained, summary.failed) == (6, 4)
    statuses = {key: status for key, (status, _) in scores(tmp_path / "study").items()}
    assert [k for k, s in statuses.items() if s == "done"] == ["ldt/run1/gen0/m00", "ldt/run1/gen0/m01"]
    with ResultStore(tmp_path / "study" / "results.sqlite") as store:
        errors = {row.error for row in store.trainings() if row.status == "failed"}
    assert len(errors) == 2 and all("not a readable PyTorch checkpoint" in error for error in errors)
    assert any(error.startswith("every training of im/run1/n2/gen0 failed") for error in errors)
    report = write_report(tmp_path / "study").table_md.read_text()
    assert "## Failed trainings" in report and "im/run1/n2/gen0/m00 | " in report


def test_a_second_driver_on_the_same_folder_is_refused(tiny_paper, tmp_path):
    out = tmp_path / "study"
    command = [sys.executable, "-m", "cityscapes_lab", "study", "--data", str(tiny_paper), "--out", str(out),
               "--approaches", "ldt"] + [x for s in TINY + ["train.epochs=20"] for x in ("--set", s)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (out / "results.sqlite").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run(command, capture_output=True, text=True)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert f"another study driver is running on this folder (pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()
    assert (out / "results.sqlite").exists()


def test_the_plan_counts_the_study_and_estimates_its_time(tiny_paper, tmp_path, capsys):
    from cityscapes_lab.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["study", "--data", str(tiny_paper), "--out", str(tmp_path / "planned"), "--approaches", "im",
              "--plan", "--throughput", "100", "--executor", "local", "--parallel", "2", *sum(
                  [["--set", s] for s in TINY], [])])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert not (tmp_path / "planned").exists()  # nothing trained, nothing written
    # LDT: 2 trainings + rank; IM: per generation a set, 2 students and a rank
    assert "11 tasks (3 rank, 2 set, 6 train); 6 trainings" in printed
    assert "| im | 1 | 2 | 2 | 4 | 2 |" in printed and "at 100.0 images/s per training (given)" in printed
    assert "--executor local --parallel 2" in printed
    assert "disk: about " in printed and "free there" in printed and "study.keep_datasets=false" in printed


def test_the_plan_at_a_measured_rate_of_several_trainings_at_once(tiny_paper, tmp_path, capsys):
    """--throughput-all: the rate of all the layout's tasks together (what gpu_check measures for N at once)
    gives the wall time, and each training runs at its share of it on the longest chain."""
    from cityscapes_lab.cli import main
    from cityscapes_lab.data.prepared import load_prepared
    from cityscapes_lab.semisup.plan import plan_study
    from cityscapes_lab.study.keys import StudyLayout

    common = ["study", "--data", str(tiny_paper), "--out", str(tmp_path / "planned"), "--approaches", "im", "--plan",
              "--throughput", "100", *sum([["--set", s] for s in TINY], [])]
    with pytest.raises(SystemExit) as exited:
        main(common + ["--executor", "local", "--parallel", "2", "--throughput-all", "0.5"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    images = int(printed.split(" images seen in training (estimated")[0].rsplit("; ", 1)[1].replace(",", ""))
    data = load_prepared(tiny_paper)
    plan = plan_study(["ldt"], ["im"], load_config(overrides=TINY), data, StudyLayout(tmp_path / "planned"))
    assert images == sum(node.images for node in plan.trainings)
    # the work in images of one training step: the pixels predicted at 3x the training's speed per pixel (given)
    work = images + sum(node.predicted for node in plan.nodes) / (3 * data.size[0] * data.size[1])
    line = next(line for line in printed.splitlines() if "together (given)" in line)
    assert "2 tasks at once, at 0.5 images/s together (given), 0.2 each" in line  # 0.25, printed to 1 decimal
    wall = float(line.split("about ")[1].split(" hours")[0])
    chain = float(line.split("at that rate each: ")[1].split(" h)")[0])
    # the 6 trainings: 2 LDT side by side, then per generation 2 students side by side: the chain is 3 trainings
    assert wall == pytest.approx(max(work / 0.5 / 3600, chain), abs=0.06) and chain > 0 and work > images
    assert not (tmp_path / "planned").exists()
    with pytest.raises(SystemExit) as exited:
        main(common + ["--throughput-all", "500"])  # one at a time has no rate of several together
    assert exited.value.code != 0
    assert "--throughput-all is the rate of several tasks at once" in capsys.readouterr().err


def test_the_plan_of_a_begun_study_says_what_is_finished_and_what_is_left(tiny_paper, tmp_path, capsys):
    from cityscapes_lab.cli import main

    out = tmp_path / "begun"
    run_study(tiny_paper, out, ["ldt"], load_config(overrides=TINY), show_progress=False)
    with pytest.raises(SystemExit) as exited:
        main(["study", "--data", str(tiny_paper), "--out", str(out), "--approaches", "im", "--plan", "--throughput",
              "100", *sum([["--set", s] for s in TINY], [])])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert "| approach | run | n | generation | tasks | trainings | finished |" in printed
    assert "| ldt | 1 | - | 1 | 3 | 2 | 2 |" in printed and "| im | 1 | 2 | 1 | 4 | 2 | 0 |" in printed
    assert "2 of 6 trainings finished (0 failed), 0 running or interrupted; left: " in printed


def test_the_full_study_plan(tiny_paper, tmp_path, capsys):
    """The study the README promises: 3 runs of the baselines and every approach over 5 generations."""
    from cityscapes_lab.cli import main

    approaches = "all"  # fdt,ldt,aldt,cl,me,ie,ns,im,evalnet,im+,im++,aim+,aim++
    with pytest.raises(SystemExit):
        main(["study", "--data", str(tiny_paper), "--out", str(tmp_path / "full"), "--approaches", approaches,
              "--plan", "--throughput", "10", "--set", "study.models=10", "--set", "study.top_k=4"])
    printed = capsys.readouterr().out
    trainings = int(printed.split(" trainings; ")[0].rsplit("; ", 1)[1])
    # 3 runs x (3 baselines x 10 models + cl 3 x 5 + 9 approaches x n values x 5 generations x 5 students)
    # + 3 runs x 5 EvalNets for each of evalnet, im++, aim++
    generations = 3 + 3 + 1 + 3 + 3 + 1 + 1 + 3 + 1  # n values of me, ie, ns, im, evalnet, im+, im++, aim+, aim++
    assert trainings == 3 * (30 + 3 * 5 + generations * 5 * 5) + 3 * 3 * 5


def test_sets_deleted_once_their_students_finish_change_no_score(tiny_paper, tmp_path, serial_scores):
    """study.keep_datasets = false: each generation's pairs and set go once its students are done; the next
    generation learns from the students, so every score is the same, and a rerun redoes nothing."""
    out = tmp_path / "study"
    config = load_config(overrides=TINY + ["study.keep_datasets=false"])
    summary = run_study(tiny_paper, out, ["im"], config, show_progress=False, executor="local", parallel=2)
    assert (summary.trained, summary.failed) == (6, 0)
    assert scores(out) == serial_scores
    for generation in (0, 1):
        folder = out / "datasets" / "im" / "run1" / "n2" / f"gen{generation}"
        assert sorted(p.name for p in folder.iterdir()) == ["stats.json"], folder
    again = run_study(tiny_paper, out, ["im"], config, show_progress=False)
    assert (again.trained, again.skipped, again.failed) == (0, 6, 0)
    assert scores(out) == serial_scores


def test_disk_needs_and_the_warning_of_a_study_that_would_not_fit(tiny_paper, tmp_path, monkeypatch):
    from cityscapes_lab.semisup import study
    from cityscapes_lab.semisup.plan import DiskNeeds

    needs = DiskNeeds(checkpoints=10**9, kept=2 * 10**9, deletable=(5 * 10**9, 4 * 10**9, 10**9))
    assert (needs.total, needs.at_once(True, 2), needs.at_once(False, 1), needs.at_once(False, 2)) == (
        13 * 10**9, 13 * 10**9, 8 * 10**9, 12 * 10**9)
    monkeypatch.setattr(study, "free_bytes", lambda out: 8 * 10**9)
    assert study.disk_warning(needs, tmp_path, True, 1) == (
        f"warning: the study's outputs take about 13.0 GB and {tmp_path} has 8.0 GB free; with --set "
        "study.keep_datasets=false about 8.0 GB (study --plan gives the details)")
    assert study.disk_warning(needs, tmp_path, False, 1) is None  # 8 GB at once fit
    assert "has 8.0 GB free (study" in study.disk_warning(needs, tmp_path, False, 2)
    assert "(not enough: " in study._disk_line(needs, tmp_path, True, 1)  # 13 GB to write, 8 GB free
    # a begun study has written part of it already: the free space needs to hold only the rest
    (tmp_path / "begun").mkdir()
    (tmp_path / "begun" / "best.pt").write_bytes(b"x" * 1000)
    assert study.written_bytes(tmp_path / "begun") == 1000
    monkeypatch.setattr(study, "written_bytes", lambda out: 6 * 10**9)
    line = study._disk_line(needs, tmp_path, True, 1)
    assert "8.0 GB free there, 6.0 GB written already" in line and "not enough" not in line
    monkeypatch.setattr(study, "written_bytes", lambda out: 4 * 10**9)
    assert "(not enough: " in study._disk_line(needs, tmp_path, True, 1)  # 9 GB left to write
    monkeypatch.undo()
    # a new study says so before it starts, and runs; a continued one does not repeat it
    monkeypatch.setattr(study, "free_bytes", lambda out: 0)
    messages = []
    summary = run_study(tiny_paper, tmp_path / "s", ["ldt"], load_config(overrides=TINY), show_progress=False,
                        log=messages.append)
    assert summary.trained == 2 and any(m.startswith("warning: the study's outputs take about") for m in messages)
    messages.clear()
    run_study(tiny_paper, tmp_path / "s", ["ldt"], load_config(overrides=TINY), show_progress=False,
              log=messages.append)
    assert not any(m.startswith("warning") for m in messages)


def test_unknown_executor_is_refused(tiny_paper, tmp_path):
    with pytest.raises(ConfigError, match="--executor 'cluster'"):
        run_study(tiny_paper, tmp_path / "s", ["ldt"], load_config(overrides=TINY), executor="cluster")
    assert not (tmp_path / "s").exists()
