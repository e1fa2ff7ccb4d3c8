"""The semi-supervised steps as self-contained tasks: their inputs are paths and settings, their outputs files in
the study folder (a generation's training set, the EvalNets' rows, an EvalNet's checkpoint) plus a returned
record. They run in the driver's process, in a worker process or on another machine that sees the same folder,
and a rerun after a kill finds its finished outputs or continues them."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import atomic
from ..config import Config, TrainConfig
from ..data.arrays import load_arrays
from ..data.prepared import load_prepared
from ..engine import kinds
from ..engine.runtime import Runtime, cpu_threads
from ..engine.train import TrainingDiverged, train
from ..models.checkpoints import save_checkpoint
from ..models.evalnet import EvalNet
from ..study.keys import GroupKey, StudyLayout
from ..study.tasks import TaskResult, note_worker
from . import evalnet as evalnets
from .recipes import RECIPES
from .runner import Workspace, build_set, evalnet_rows, select_masks


def _workspace(root: str, data: str, config: dict) -> Workspace:
    from ..config import _apply

    return Workspace(StudyLayout(Path(root)), load_prepared(data), _apply(Config(), config, "the task"))


def _threads(config: dict, threads: int) -> None:
    torch.set_num_threads(cpu_threads(threads or config["train"]["threads"]))


@dataclass(frozen=True)
class SetTask:
    """A generation's training set: its teachers label the unlabeled images (or, for the EvalNet approach, the
    EvalNets choose among the candidates' masks) and the students' set is composed, once."""

    root: str
    data: str
    config: dict  # Config.to_dict()
    approach: str
    group: tuple  # GroupKey fields
    teachers: tuple[str, ...] = ()
    nets: tuple[str, ...] = ()  # the ranked EvalNets
    candidates: tuple[str, ...] = ()  # EvalNet approach: the source group's finished models
    threads: int = 0  # torch threads (the executor's share of the cores; 0: all of them)

    def run(self) -> dict:
        _threads(self.config, self.threads)
        ws = _workspace(self.root, self.data, self.config)
        group, recipe = GroupKey(*self.group), RECIPES[self.approach]
        if recipe.rule == "evalnet_selection":
            final = select_masks(ws, group, [Path(p) for p in self.nets], [Path(p) for p in self.candidates])
        else:
            final = build_set(ws, recipe, group, [Path(p) for p in self.teachers], [Path(p) for p in self.nets])
        stats = ws.layout.dataset(str(group)) / "stats.json"
        return {"set": str(final), "size": len(load_arrays(final)),
                "stats": json.loads(stats.read_text()) if stats.exists() else {}}


@dataclass(frozen=True)
class RowsTask:
    """The EvalNets' training and validation rows of a run (built once)."""

    root: str
    data: str
    config: dict
    approach: str
    run_number: int
    members: dict  # baseline -> finished checkpoints
    threads: int = 0  # torch threads (the executor's share of the cores; 0: all of them)

    def run(self) -> tuple[str, str]:
        _threads(self.config, self.threads)
        ws = _workspace(self.root, self.data, self.config)
        members = {name: [Path(p) for p in paths] for name, paths in self.members.items()}
        train_rows, val_rows = evalnet_rows(ws, self.approach, RECIPES[self.approach], self.run_number, members)
        return str(train_rows), str(val_rows)


@dataclass(frozen=True)
class EvalNetTask:
    """One EvalNet: trained on the rows (the ``evalnet`` kind of the training loop), resumed from ``last.pt``,
    kept as ``best.pt`` with its validation figures."""

    key: str
    seed: int
    config: dict
    rows: str
    val_rows: str
    out_dir: str
    num_classes: int
    show_progress: bool = False
    threads: int = 0  # torch threads (the executor's share of the cores; 0: all of them)

    def run(self) -> TaskResult:
        out = Path(self.out_dir)
        done = out / "result.json"
        if done.exists():
            return TaskResult(**json.loads(done.read_text()))
        out.mkdir(parents=True, exist_ok=True)
        _threads(self.config, self.threads)
        note_worker(out)
        start = time.perf_counter()
        config = TrainConfig(**self.config["train"])
        semisup = self.config["semisup"]
        runtime = Runtime.from_config(config)
        rows, val_rows = evalnets.load_rows(Path(self.rows)), evalnets.load_rows(Path(self.val_rows))
        torch.manual_seed(self.seed)
        model = EvalNet(self.num_classes)
        try:
            training = kinds.evalnet(model, rows, val_rows, config, runtime, epochs=semisup["evalnet_epochs"],
                                     seed=self.seed)
            result = train(model, training, config, runtime, checkpoint=out / "last.pt", desc=self.key,
                           show_progress=self.show_progress)
        except TrainingDiverged as exc:
            outcome = TaskResult(self.key, "failed", time.perf_counter() - start, error=str(exc))
            atomic.write_json(done, asdict(outcome))
            return outcome
        save_checkpoint(out / "best.pt", {"model_name": "evalnet", "num_classes": self.num_classes,
                                          "state_dict": result.best_state, "key": self.key, "val": result.best})
        outcome = TaskResult(self.key, "done", time.perf_counter() - start, result.epochs, None, str(out / "best.pt"),
                             None, {"val": result.best})
        atomic.write_json(done, asdict(outcome))
        (out / "last.pt").unlink(missing_ok=True)
        return outcome
