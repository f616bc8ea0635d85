"""The one way this package reads a ``.pt``/``.pth`` file: ``torch.load(weights_only=True)``.

A pickle can call any function while it is read (``os.system`` via ``__reduce__``), so a checkpoint from a
colleague, a download or a run dir someone could write to must never be unpickled in full. torch's
``weights_only`` unpickler builds only tensors and plain Python data; :data:`DATA_GLOBALS` adds the few
plain-data types that checkpoints in the wild hold besides: numpy arrays and scalars (the RNG states of
this engine's older checkpoints) and the ``argparse.Namespace`` that facebookresearch/deit stores under
``"args"``. Anything else is refused with one line naming the file and what it would have run.

Used by the engine (resume, ``research eval``, ``finetune.checkpoint``) and by the teachers, so it sits
beside :mod:`research.registry`, below both.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DATA_GLOBALS", "CheckpointError", "UnsafeCheckpointError", "check_file", "safe_load"]

_SHOWN = 5
_NUMERIC_DTYPES = "?bBhHiIlLqQefdgFDG"  # numpy's numeric type codes; object arrays ('O') are not plain data
_multiarray: Any = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # type: ignore[attr-defined]
#: Globals a checkpoint may name besides torch's own (a pair gives the name older numpy pickled it under).
DATA_GLOBALS: list[Any] = [
    argparse.Namespace,
    np.ndarray,
    np.dtype,
    *sorted({type(np.dtype(code)) for code in _NUMERIC_DTYPES}, key=str),
    _multiarray._reconstruct,
    _multiarray.scalar,
    (_multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    (_multiarray.scalar, "numpy.core.multiarray.scalar"),
]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe, or does not fit what it is loaded into.

    Its message is one line that names the file; the CLI prints it and exits with status 2.
    """


class UnsafeCheckpointError(CheckpointError):
    """The file's pickle names code, not only data: it was refused unread (never a fallback)."""


def check_file(path: str | os.PathLike[str], *, what: str = "checkpoint", hint: str = "check the path") -> Path:
    """``path`` as a ``Path``, if it is an existing, readable file (its content is not read).

    Raises:
        CheckpointError: Missing (the message ends with ``hint``), under an unknown ``~user``, a
            directory, or not readable.
    """
    try:
        file = Path(path).expanduser()
    except RuntimeError:  # ~user of no user on this machine
        raise CheckpointError(f"{what} {path}: no home directory for {str(path).split('/')[0]} on this machine") from None
    if not file.exists():
        raise CheckpointError(f"{what} {path}: no such file; {hint}")
    if not file.is_file():
        raise CheckpointError(f"{what} {path}: is a directory, expected a .pt/.pth file written by torch.save")
    if not os.access(file, os.R_OK):
        raise CheckpointError(f"{what} {path}: not readable (permissions)")
    return file


def safe_load(path: str | os.PathLike[str], *, what: str = "checkpoint") -> Any:
    """What ``path`` holds, on CPU, read without running any code it pickled.

    Args:
        path: The file; named in every error.
        what: What the file is for, to start the error message ("teacher checkpoint").

    Raises:
        UnsafeCheckpointError: The pickle names a global that is not plain data (``posix.system``).
        CheckpointError: Missing, a directory, truncated, garbage, or not written by ``torch.save``.
    """
    file = check_file(path, what=what)
    try:
        with torch.serialization.safe_globals(DATA_GLOBALS):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        foreign = _foreign_globals(file, exc)
        if not foreign:
            reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
            detail = reason.group(1).strip() if reason else _first_line(exc)
            raise CheckpointError(f"{what} {path}: not a readable PyTorch checkpoint ({detail})") from exc
        shown = ", ".join(foreign[:_SHOWN]) + (", ..." if len(foreign) > _SHOWN else "")
        raise UnsafeCheckpointError(
            f"{what} {path}: refuses to unpickle {shown} (not plain data: reading it could run code); "
            "use only files you trust, saved as tensors and plain data: torch.save({'model': model.state_dict()}, path)"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError for a truncated zip, others for plain garbage
        raise CheckpointError(
            f"{what} {path}: not a readable PyTorch checkpoint, truncated or corrupt ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def _foreign_globals(file: Path, exc: Exception) -> list[str]:
    """The globals the pickle names that are not allowed: from a scan of the file (zip format), else
    from torch's message (the legacy format stops at the first one)."""
    try:
        with torch.serialization.safe_globals(DATA_GLOBALS):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception:
        found = []
    return found or re.findall(r"GLOBAL ([\w.]+)", str(exc))[:1]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(". ") if text else "no message"
