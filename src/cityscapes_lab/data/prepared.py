"""Loading a prepared folder: its splits as arrays (``data.torch_dataset`` wraps one as a PyTorch ``Dataset``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .prepare import FORMAT
from .rows import RowArray


@dataclass(frozen=True)
class SplitArrays:
    """One split: images (N, H, W, 3) uint8 RGB, labels (N, H, W) uint8 or None, and, where the source has
    them, instance ids (N, H, W) uint16 (labelId*1000+k, for iIoU). Each is an ndarray or a ``RowArray`` that
    reads rows when indexed (``np.asarray`` reads all)."""

    name: str
    ids: list[str]
    images: np.ndarray | RowArray
    labels: np.ndarray | RowArray | None
    instances: np.ndarray | RowArray | None = None

    def __len__(self) -> int:
        return len(self.ids)


class PreparedData:
    """A prepared folder (see ``data.prepare``): metadata, split lists and pixel arrays.

    By default the arrays are read on demand (``RowArray``: rows are read when indexed, the file stays in the
    operating system's cache); ``in_memory=True`` reads every array into RAM at once.
    """

    def __init__(self, root: Path, in_memory: bool = False):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise DataError(f"{self.root}: not a prepared folder (no meta.json); run `cityscapes-lab prepare` first")
        try:
            self.meta = json.loads(meta_path.read_text())
            self.splits: dict[str, list[str]] = json.loads((self.root / "splits.json").read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.root}: meta.json or splits.json is unreadable ({exc}); prepare it again "
                            "with --force") from None
        if self.meta.get("format") != FORMAT:
            raise DataError(f"{meta_path}: format {self.meta.get('format')!r} is not {FORMAT!r}; prepare it again "
                            "with this version (--force)")
        self._where = {image_id: (source, row) for source, info in self.meta["sources"].items()
                       for row, image_id in enumerate(info["ids"])}
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        self._in_memory = in_memory
        if in_memory:
            for source, info in self.meta["sources"].items():
                for kind in ("images", "labels", "instances"):
                    if kind == "images" or info.get(kind):
                        self._array(source, kind)

    # --- metadata -----------------------------------------------------------------------------------------------
    @property
    def protocol(self) -> str:
        return self.meta["protocol"]

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    @property
    def ignore_index(self) -> int | None:
        return self.meta["ignore_index"]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the stored images."""
        return tuple(self.meta["size"])

    @property
    def split_family(self) -> str | None:
        """Which family the ``train_labeled_*`` subsets come from: ``cps`` or ``u2pl`` (published lists, see
        ``data.split_families``), ``seeded`` (our own draw), or None for the paper protocol. A result compares
        only with results on the same family. Folders prepared before families existed hold seeded draws."""
        if "split_family" in self.meta:
            return self.meta["split_family"]
        return "seeded" if self.protocol == "standard" else None

    @property
    def stand_in(self) -> bool:
        """True when the source was generated stand-in data, not Cityscapes."""
        return bool(self.meta["source"].get("stand_in"))

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={len(ids)}" for name, ids in self.splits.items())
        return f"PreparedData({self.root}, protocol={self.protocol}, size={self.size}, {counts})"

    # --- pixels -------------------------------------------------------------------------------------------------
    def _array(self, source: str, kind: str) -> np.ndarray | RowArray:
        key = (source, kind)
        if key not in self._arrays:
            path = self.root / "arrays" / f"{source}.{kind}.npy"
            try:
                self._arrays[key] = np.load(path) if self._in_memory else RowArray(path)
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: unreadable ({exc}); prepare the folder again with --force") from None
        return self._arrays[key]

    def split(self, name: str) -> SplitArrays:
        """The images and labels of a split. A split that is a whole source is returned without copying."""
        if name not in self.splits:
            raise DataError(f"{self.root}: has no split {name!r}; it has: {', '.join(self.splits)}")
        ids = self.splits[name]
        sources = {self._where[i][0] for i in ids}
        if len(sources) != 1:
            raise DataError(f"{self.root}: split {name!r} spans several sources; prepare it again")
        source = sources.pop()
        rows = np.array([self._where[i][1] for i in ids], dtype=np.int64)
        has_labels = self.meta["sources"][source]["labels"]
        whole = len(rows) == len(self.meta["sources"][source]["ids"]) and bool(np.all(rows == np.arange(len(rows))))
        def pick(array):
            if whole:
                return array
            return array.subset(rows) if isinstance(array, RowArray) else array[rows]

        images = pick(self._array(source, "images"))
        label_array = pick(self._array(source, "labels")) if has_labels else None
        instances = pick(self._array(source, "instances")) if self.meta["sources"][source].get("instances") else None
        return SplitArrays(name, list(ids), images, label_array, instances)

    def has_labels(self, name: str) -> bool:
        """Whether a split's images have labels (the official test split has none)."""
        ids = self.splits[name]
        return not ids or bool(self.meta["sources"][self._where[ids[0]][0]]["labels"])

    def labeled_split(self, name: str, option: str = "split") -> None:
        """Refuse a split that does not exist or has no labels, for training or validating on it."""
        if name not in self.splits:
            raise DataError(f"{self.root}: has no split {name!r} ({option}); it has: {', '.join(self.splits)}")
        if not self.has_labels(name):
            labeled = ", ".join(split for split in self.splits if self.has_labels(split))
            raise DataError(f"{self.root}: split {name!r} ({option}) has no labels (the official test labels are not "
                            f"public); choose a labeled split: {labeled}")

    def verify(self) -> None:
        """Open every array file and check that it is complete (DataError naming the file otherwise): a long job
        checks its data before it starts instead of failing when it first reads a damaged file."""
        for source, info in self.meta["sources"].items():
            for kind in ("images", "labels", "instances"):
                if kind == "images" or info.get(kind):
                    array = self._array(source, kind)
                    if len(array) != len(info["ids"]):
                        raise DataError(f"{self.root / 'arrays' / f'{source}.{kind}.npy'}: holds {len(array)} rows "
                                        f"but meta.json lists {len(info['ids'])} images; prepare the folder again "
                                        "with --force")


def load_prepared(root: str | Path, in_memory: bool = False) -> PreparedData:
    """Open a folder written by ``cityscapes-lab prepare``; raises DataError if it is not one."""
    return PreparedData(Path(root), in_memory=in_memory)
