"""Rows of an ``.npy`` file, read on demand with positioned reads instead of a memory map.

Training and scoring touch every row of a split once per pass; a memory map would keep all of them resident in
the process (the 2975 train images of the paper protocol alone are 0.8 GB). Reading the rows asked for into
fresh arrays leaves the file in the operating system's cache, shared and reclaimable, and keeps the process
small. Indexing works like a NumPy array's first dimension; ``np.asarray`` reads everything.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class LazyRows:
    """What every lazily read (N, ...) array shares: NumPy-like indexing of its first dimension (an int, a slice,
    an index array, optionally followed by indices of the row), iteration and ``np.asarray``. A subclass has
    ``dtype``, ``_row_shape``, ``__len__`` and ``_rows(positions)``, which reads those rows."""

    dtype: np.dtype
    _row_shape: tuple[int, ...]

    def __len__(self) -> int:
        raise NotImplementedError

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self),) + self._row_shape

    @property
    def ndim(self) -> int:
        return 1 + len(self._row_shape)

    def __getitem__(self, index):
        rest = ()
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
        single = isinstance(index, (int, np.integer))
        rows = self._rows(np.atleast_1d(np.arange(len(self))[index]))
        if single:
            return rows[0][rest] if rest else rows[0]
        return rows[(slice(None),) + rest] if rest else rows

    def __iter__(self):
        for start in range(0, len(self), 64):
            yield from self[start:start + 64]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self[:]
        return array.astype(dtype) if dtype is not None else array


class RowArray(LazyRows):
    """A read-only (N, ...) array on disk, optionally restricted to some rows (``rows``, in that order)."""

    def __init__(self, path: Path, rows: np.ndarray | None = None):
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            self._offset = handle.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not supported")
        if not shape:
            raise ValueError(f"{self.path}: holds a single value, not rows")
        self.dtype = np.dtype(dtype)
        self._file_rows = shape[0]
        self._row_shape = tuple(shape[1:])
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * self.dtype.itemsize
        expected = self._offset + self._file_rows * self._row_bytes
        actual = os.path.getsize(self.path)
        if actual < expected:  # cut short (a copy or download that stopped)
            raise ValueError(f"the file ends early: {actual} of {expected} bytes")
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return self._file_rows if self.rows is None else len(self.rows)

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        return self._read(positions if self.rows is None else self.rows[positions])

    def _file_indices(self, index) -> np.ndarray:
        positions = np.arange(len(self))[index]
        return positions if self.rows is None else self.rows[positions]

    def _read(self, file_rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(file_rows),) + self._row_shape, dtype=self.dtype)
        flat = out.reshape(len(file_rows), -1).view(np.uint8)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            start = 0
            while start < len(file_rows):  # one read per run of consecutive rows
                stop = start + 1
                while stop < len(file_rows) and file_rows[stop] == file_rows[stop - 1] + 1:
                    stop += 1
                length = (stop - start) * self._row_bytes
                position = self._offset + int(file_rows[start]) * self._row_bytes
                view = memoryview(flat[start:stop].reshape(-1))
                done = 0
                while done < length:
                    count = os.preadv(fd, [view[done:]], position + done)
                    if count <= 0:
                        raise OSError(f"{self.path}: the file ends early; prepare it again")
                    done += count
                start = stop
        finally:
            os.close(fd)
        return out

    def subset(self, rows: np.ndarray) -> RowArray:
        """The given rows of this array (positions within it), as another lazy array."""
        return RowArray(self.path, self._file_indices(np.asarray(rows, dtype=np.int64)))


class BlankedRows(LazyRows):
    """Image rows (N, H, W, 3) read with 0 wherever the same rows of a mask (N, H, W) are true: IM's blocked input,
    kept as the unlabeled images and the masks instead of a second copy of the images."""

    def __init__(self, images: RowArray, masks: RowArray):
        if len(images) != len(masks) or images.shape[1:3] != masks.shape[1:]:
            raise ValueError("blanked rows need a mask row of the image's size for every image row")
        self.images, self.masks = images, masks
        self.dtype = images.dtype
        self._row_shape = images.shape[1:]

    def __len__(self) -> int:
        return len(self.images)

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        out = self.images._rows(positions)
        out[self.masks._rows(positions).astype(bool, copy=False)] = 0
        return out

    def subset(self, rows: np.ndarray) -> BlankedRows:
        """The given rows (positions within this array), as another lazy array."""
        return BlankedRows(self.images.subset(rows), self.masks.subset(rows))


def part_starts(parts: list) -> np.ndarray:
    """The first row of each part when the parts are read one after another, and the total at the end."""
    return np.cumsum([0] + [len(p) for p in parts])


class StackedRows(LazyRows):
    """Several ``RowArray`` (or ``BlankedRows``) parts, rows of the same shape and type, read as one (N, ...) array,
    part after part: a training set that refers to the rows of other files instead of copying them
    (``data.arrays`` links)."""

    def __init__(self, parts: list[RowArray | BlankedRows]):
        if not parts or len({(p.dtype, p.shape[1:]) for p in parts}) != 1:
            raise ValueError("stacked parts need the same row shape and type")
        self.parts = list(parts)
        self.dtype = parts[0].dtype
        self._row_shape = parts[0].shape[1:]
        self._starts = part_starts(parts)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        part_of = np.searchsorted(self._starts, positions, side="right") - 1
        out = np.empty((len(positions),) + self._row_shape, dtype=self.dtype)
        for part in np.unique(part_of):  # one read per part, in the order asked
            where = np.flatnonzero(part_of == part)
            out[where] = self.parts[part][positions[where] - self._starts[part]]
        return out

    def subset(self, rows: np.ndarray) -> StackedRows | RowArray | BlankedRows:
        """The given rows (positions within this array), as another lazy array."""
        rows = np.arange(len(self))[np.asarray(rows, dtype=np.int64)]
        part_of = np.searchsorted(self._starts, rows, side="right") - 1
        bounds = np.flatnonzero(np.diff(part_of)) + 1  # consecutive rows of one part stay one part
        parts = [self.parts[owner[0]].subset(chunk - self._starts[owner[0]])
                 for chunk, owner in zip(np.split(rows, bounds), np.split(part_of, bounds)) if len(chunk)]
        return parts[0] if len(parts) == 1 else StackedRows(parts)
