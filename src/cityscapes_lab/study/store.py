"""The results database of a study (SQLite, one file in the study folder).

``trainings``: one row per training (key, approach, run, n, generation, member, seed, config hash, status,
timings, best epoch, checkpoint, error). ``scores``: one row per (training, split, metric). ``ranking``: the top-K
of every group. ``meta``: the study's settings. SQLite's transactions make every update atomic, so a study killed
at any moment leaves a consistent database.
"""

from __future__ import annotations

import json
import math
import socket
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .keys import GroupKey, TrainingKey

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trainings (
    key TEXT PRIMARY KEY, approach TEXT NOT NULL, run INTEGER NOT NULL, n INTEGER NOT NULL,
    generation INTEGER NOT NULL, member INTEGER NOT NULL, seed INTEGER NOT NULL, config_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    started REAL, finished REAL, seconds REAL, epochs INTEGER, best_epoch INTEGER, checkpoint TEXT,
    error TEXT, host TEXT, role TEXT NOT NULL DEFAULT 'models');
CREATE TABLE IF NOT EXISTS scores (
    key TEXT NOT NULL REFERENCES trainings(key), split TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (key, split, metric));
CREATE TABLE IF NOT EXISTS ranking (
    grp TEXT NOT NULL, rank INTEGER NOT NULL, key TEXT NOT NULL, score REAL, PRIMARY KEY (grp, rank));
CREATE TABLE IF NOT EXISTS group_stats (
    grp TEXT NOT NULL, split TEXT NOT NULL, metric TEXT NOT NULL, value REAL, PRIMARY KEY (grp, split, metric));
"""


@dataclass(frozen=True)
class TrainingRow:
    key: str
    approach: str
    run: int
    n: int
    generation: int
    member: int
    seed: int
    config_hash: str
    status: str
    seconds: float | None
    epochs: int | None
    best_epoch: int | None
    checkpoint: str | None
    error: str | None
    role: str = "models"  # GroupKey.role: segmentation networks or EvalNets


class ResultStore:
    """Read and write a study's results database."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
            self._migrate()
            self.db.execute("SELECT count(*) FROM trainings JOIN scores USING (key)").fetchone()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise DataError(f"{self.path}: not a readable results database ({exc}); restore it from a copy, or "
                            "start the study again under a new --out") from None

    def _migrate(self) -> None:
        """Databases of earlier versions have no ``role`` column; their EvalNet rows are named ``<approach>.nets``."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(trainings)")}
        if "role" not in columns:
            with self.db:
                self.db.execute("BEGIN")
                self.db.execute("ALTER TABLE trainings ADD COLUMN role TEXT NOT NULL DEFAULT 'models'")
                self.db.execute("UPDATE trainings SET role = 'evalnets', approach = substr(approach, 1, "
                                "length(approach) - 5) WHERE approach LIKE '%.nets'")
                self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- meta ---------------------------------------------------------------------------------------------------
    def get_meta(self, name: str) -> object | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, name: str, value: object) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value)))

    # --- trainings ----------------------------------------------------------------------------------------------
    def status(self, key: TrainingKey) -> str | None:
        row = self.db.execute("SELECT status FROM trainings WHERE key = ?", (str(key),)).fetchone()
        return row[0] if row else None

    def start(self, key: TrainingKey, seed: int, config_hash: str) -> None:
        """Record a training as running (again, after a kill: the row is reused, never duplicated)."""
        g = key.group
        self.db.execute(
            "INSERT INTO trainings (key, approach, run, n, generation, member, seed, config_hash, status, started,"
            " host, role) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?) ON CONFLICT(key) DO UPDATE SET"
            " status='running', started=excluded.started, host=excluded.host, error=NULL",
            (str(key), g.approach, g.run, g.n, g.generation, key.member, seed, config_hash, time.time(),
             socket.gethostname(), g.role))

    def finish(self, key: TrainingKey, *, status: str, seconds: float, epochs: int | None, best_epoch: int | None,
               checkpoint: str | None, error: str | None, scores: dict[str, dict[str, float]]) -> None:
        """Record a finished (done or failed) training and its scores, in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "UPDATE trainings SET status=?, finished=?, seconds=?, epochs=?, best_epoch=?, checkpoint=?, error=?"
                " WHERE key=?", (status, time.time(), seconds, epochs, best_epoch, checkpoint, error, str(key)))
            self.db.execute("DELETE FROM scores WHERE key = ?", (str(key),))
            self.db.executemany("INSERT INTO scores VALUES (?, ?, ?, ?)", [
                (str(key), split, metric, None if value is None or math.isnan(value) else float(value))
                for split, values in scores.items() for metric, value in values.items()])
            self.db.execute("COMMIT")

    def config_hashes(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT DISTINCT config_hash FROM trainings")}

    def trainings(self, approach: str | None = None, role: str | None = None) -> list[TrainingRow]:
        """Every training, or those of one approach and/or role, in key order."""
        query = ("SELECT key, approach, run, n, generation, member, seed, config_hash, status, seconds, epochs,"
                 " best_epoch, checkpoint, error, role FROM trainings WHERE (? IS NULL OR approach = ?) AND"
                 " (? IS NULL OR role = ?) ORDER BY key")
        return [TrainingRow(*row) for row in self.db.execute(query, (approach, approach, role, role)).fetchall()]

    def scores(self, key: TrainingKey | str) -> dict[str, dict[str, float]]:
        result: dict[str, dict[str, float]] = {}
        for split, metric, value in self.db.execute("SELECT split, metric, value FROM scores WHERE key = ?",
                                                    (str(key),)):
            result.setdefault(split, {})[metric] = math.nan if value is None else value
        return result

    def score_table(self, metrics: Iterable[str]) -> list[tuple]:
        """(approach, run, n, generation, member, split, metric, value) of the done segmentation trainings for
        ``metrics``."""
        wanted = list(metrics)
        marks = ",".join("?" * len(wanted))
        return self.db.execute(
            "SELECT t.approach, t.run, t.n, t.generation, t.member, s.split, s.metric, s.value FROM trainings t"
            f" JOIN scores s ON s.key = t.key WHERE t.status = 'done' AND t.role = 'models' AND s.metric IN ({marks})",
            wanted).fetchall()

    # --- groups -------------------------------------------------------------------------------------------------
    def set_ranking(self, group: GroupKey, ranked: list[tuple[TrainingKey, float]]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM ranking WHERE grp = ?", (str(group),))
            self.db.executemany("INSERT INTO ranking VALUES (?, ?, ?, ?)",
                                [(str(group), rank, str(key), score) for rank, (key, score) in enumerate(ranked, 1)])
            self.db.execute("COMMIT")

    def ranking(self, group: GroupKey) -> list[tuple[str, float]]:
        return self.db.execute("SELECT key, score FROM ranking WHERE grp = ? ORDER BY rank", (str(group),)).fetchall()

    def set_group_stats(self, group: GroupKey, stats: dict[str, dict[str, float]]) -> None:
        """Per-group figures that are not per-model (e.g. the mean inconsistency-mask size of a generation)."""
        self.db.executemany("INSERT OR REPLACE INTO group_stats VALUES (?, ?, ?, ?)",
                            [(str(group), split, metric, value) for split, values in stats.items()
                             for metric, value in values.items()])

    def group_stats(self) -> list[tuple[str, str, str, float]]:
        return self.db.execute("SELECT grp, split, metric, value FROM group_stats ORDER BY grp").fetchall()
