"""Checkpoints: plain dicts of tensors, numbers and strings, written atomically, read with weights_only=True.

Our own files hold no pickled objects, so they load without executing code; a file that needs code execution
is refused with a clear message.
"""

from __future__ import annotations

import io
import pickle
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


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); DataError if it is unreadable or needs code to load."""
    try:
        return torch.load(Path(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no such checkpoint; check the path") from None
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: refused: loading it would execute code ({str(exc).splitlines()[0][:120]}); "
                        "only load checkpoints from sources you trust, converted to plain tensors") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0][:120]}); "
                        "download or write it again") from None
