"""Checkpoints: plain dicts of tensors, numbers and strings, written atomically, read with weights_only=True.

Our own files hold no pickled objects, so they load without executing code; a file that needs code execution
is refused with a clear message.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from ..errors import DataError

FORMAT = "cityscapes-lab/checkpoint-v1"


def save_checkpoint(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` (plain types and tensors only) to ``path`` via a temporary file and a rename."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **content}, buffer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(Path(path), buffer.getvalue())


# NumPy data types that released checkpoints keep in their metadata: plain data, rebuilt without running code.
SAFE_DATA_GLOBALS = frozenset({
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct", "numpy.dtype", "numpy.ndarray",
})


def _data_globals(names: list[str]) -> list | None:
    """The objects for ``names`` if every one is a plain NumPy data type (numpy.dtypes.* included), else None."""
    import importlib

    if not all(n in SAFE_DATA_GLOBALS or n.startswith("numpy.dtypes.") for n in names):
        return None
    import numpy

    found = [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType")]  # rebuilt dtypes
    for name in names:
        module, _, attribute = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attribute))
        except (ImportError, AttributeError):
            return None
    return found


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``; NumPy data types in metadata are allowed); DataError if
    it is unreadable or would need code to load."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a checkpoint file; pass the .pt/.pth file")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: is empty (0 bytes), not a checkpoint; download or write it again")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no such checkpoint; check the path") from None
    except pickle.UnpicklingError as exc:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - not a zip checkpoint: name nothing
            unsafe = []
        allowed = _data_globals(unsafe) if unsafe else None
        if allowed:
            with torch.serialization.safe_globals(allowed):
                return torch.load(Path(path), map_location=map_location, weights_only=True)
        if not unsafe and "global" not in str(exc).lower():  # damaged bytes, not a forbidden object
            raise DataError(f"{path}: not a readable PyTorch checkpoint ({_first_sentence(exc)}); download or write "
                            "it again") from None
        named = ", ".join(unsafe[:4]) or str(exc).splitlines()[-1][:120]
        raise DataError(f"{path}: refused: loading it would run code it names ({named}); use the checkpoint as "
                        "published, or convert it to plain tensors in a process you trust") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        raise DataError(f"{path}: not a readable PyTorch checkpoint ({_first_sentence(exc)}); download or write it "
                        "again") from None


def _first_sentence(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.split(". ")[0][:160]
