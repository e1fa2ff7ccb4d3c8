"""The study as a graph of tasks, and the driver that runs it on an executor.

A ``Node`` is one step of the plan: a training, the pseudo-labelling that builds a generation's training set, the
EvalNets' rows, the ALDT set, or the ranking of a group. It names the nodes it waits for; nothing else is ordered.
When they are finished the driver asks the node for its task (a self-contained, picklable object whose ``run()``
reads paths and settings and writes files in its own folder), hands it to the executor, and records the result:
the driver alone writes ``results.sqlite``. Rankings are database work and run in the driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import LabError
from ..interrupts import raise_if_interrupted
from .keys import GroupKey, TrainingKey


@dataclass
class Node:
    id: str
    kind: str  # train | evalnet | consistency | set | rows | aldt | rank
    group: GroupKey
    after: tuple[str, ...] = ()
    key: TrainingKey | None = None  # trainings: their row of the database
    # the task to hand to the executor (None: the node's work was done here, in the driver)
    make: Callable[[Any], Any] = lambda ctx: None
    record: Callable[[Any, Any], None] = lambda ctx, result: None  # store what the task returned
    finished: Callable[[Any], bool] = lambda ctx: False  # done before (a rerun skips it)
    images: int = 0  # trainings: images seen in training (an estimate where the set is not built yet)
    # pixels its networks predict: a training's validations and scoring, a set's pseudo-labels (estimates)
    predicted: int = 0
    disk: int = 0  # bytes its outputs take (an estimate where a set's size is not known yet)
    transient: int = 0  # of those, the bytes deleted once its group is done (study.keep_datasets = false)
    seed: int = 0  # trainings: their seed (recorded also when the training cannot start)

    @property
    def training(self) -> bool:
        return self.key is not None


@dataclass
class Plan:
    nodes: list[Node] = field(default_factory=list)

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    @property
    def trainings(self) -> list[Node]:
        return [node for node in self.nodes if node.training]

    def groups(self) -> list[GroupKey]:
        """Every group with trainings, in plan order."""
        return list(dict.fromkeys(node.group for node in self.trainings))


def perform(task: Any) -> Any:
    """What every executor runs: the task's own ``run()`` (a module-level function, so it pickles)."""
    return task.run()


def run_plan(plan: Plan, ctx: Any, executor: Any, fail_training: Callable[[Any, Node, str], None]) -> None:
    """Run every node of ``plan`` whose inputs are ready, at most ``executor.slots`` tasks at once, until all are
    finished. A node whose task fails, or that waits for a failed one, is failed with the reason
    (``fail_training`` records it for trainings); the rest of the study goes on."""
    waiting = list(plan.nodes)
    done: set[str] = set()
    failed: dict[str, str] = {}
    running: dict[Any, Node] = {}

    def finish(node: Node, reason: str | None = None, recorded: bool = False) -> None:
        done.add(node.id)
        if reason is not None:
            failed[node.id] = reason
            if node.training and not recorded:
                fail_training(ctx, node, reason)

    while waiting or running:
        started = True
        while started and len(running) < executor.slots:
            started = False
            for node in waiting:
                if not all(d in done for d in node.after):
                    continue
                waiting.remove(node)
                started = True
                blocked = next((failed[d] for d in node.after if d in failed and node.kind != "rank"), None)
                if node.kind == "rank" and node.after and all(d in failed for d in node.after):
                    blocked = f"every training of {node.group} failed ({failed[node.after[0]]})"
                if blocked is not None:
                    finish(node, blocked)
                elif node.finished(ctx):
                    finish(node)
                    if node.training:
                        ctx.skipped(node)
                else:
                    try:
                        task = node.make(ctx)
                    except LabError as exc:  # e.g. fewer finished teachers than the approach needs
                        finish(node, str(exc))
                        break
                    if task is None:
                        finish(node)
                    else:
                        if node.training:
                            ctx.store.start(node.key, node.seed, ctx.config.digest())
                        running[executor.submit(task)] = node
                break  # the plan order decides again which node comes next
        if running:
            raise_if_interrupted()  # before the wait, so that no finished result goes unrecorded
            handle, result, error = executor.wait()
            node = running.pop(handle)
            if error is not None:
                reason = f"{type(error).__name__}: {error}" if not isinstance(error, LabError) else str(error)
                finish(node, reason)
            else:
                node.record(ctx, result)
                status_failed = getattr(result, "status", "") == "failed"
                finish(node, result.error if status_failed else None, recorded=True)
        elif waiting:  # nothing runs and nothing can start: a dependency that is not in the plan
            missing = sorted({d for node in waiting for d in node.after if d not in done})
            raise RuntimeError(f"the plan waits for steps it does not contain: {', '.join(missing[:5])}")
