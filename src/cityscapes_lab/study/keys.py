"""The identity of every training in a study, and the one place that turns identities into paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..seeds import derive_seed  # noqa: F401 - the study's seeds, used with its keys


@dataclass(frozen=True, order=True)
class GroupKey:
    """A group of models trained together and ranked together: one approach, run, teacher count n and
    generation (baselines: n = 0, generation = 0). ``role``: segmentation networks (``models``) or the EvalNets
    an approach trains to judge masks (``evalnets``)."""

    approach: str
    run: int
    n: int = 0
    generation: int = 0
    role: str = "models"

    ROLES = ("models", "evalnets")

    def __post_init__(self) -> None:
        if self.role not in self.ROLES:
            raise ValueError(f"unknown group role {self.role!r}; the roles are: {', '.join(self.ROLES)}")

    def __str__(self) -> str:
        # the text form names folders and database rows (EvalNets keep the ".nets" names of earlier versions)
        approach = self.approach + (".nets" if self.role == "evalnets" else "")
        return f"{approach}/run{self.run}" + (f"/n{self.n}" if self.n else "") + f"/gen{self.generation}"


@dataclass(frozen=True, order=True)
class TrainingKey:
    group: GroupKey
    member: int  # 0-based index within the group

    def __str__(self) -> str:
        return f"{self.group}/m{self.member:02d}"


@dataclass(frozen=True)
class StudyLayout:
    """Where everything of a study lives under its folder."""

    root: Path

    @property
    def database(self) -> Path:
        return self.root / "results.sqlite"

    @property
    def log(self) -> Path:
        """One line per finished training (the study's progress, for `tail -f`)."""
        return self.root / "study.log"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def training(self, key: TrainingKey) -> Path:
        return self.root / "models" / str(key)

    def group(self, group: GroupKey) -> Path:
        return self.root / "models" / str(group)

    def top(self, group: GroupKey, rank: int) -> Path:
        """The checkpoint of a group's rank-th best model (1-based), kept by name."""
        return self.group(group) / f"top{rank}.pt"

    def dataset(self, name: str) -> Path:
        """A derived training set (the ALDT set, pseudo-labelled sets), in the prepared-array format."""
        return self.root / "datasets" / name

    def predictions(self, key: TrainingKey, split: str) -> Path:
        return self.root / "predictions" / str(key) / split
