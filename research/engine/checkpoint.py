"""Checkpoints that survive a kill at any moment, a full disk and a corrupt file.

A checkpoint holds everything needed to continue exactly: weights, optimizer, scheduler, loss scaler,
EMA weights, progress counters, the RNG states of every process-level generator, and the config, all as
tensors and plain data, so that it loads with ``weights_only=True`` (:func:`research.safe_load.safe_load`).

It is written to a temporary file, then renamed over the old one, so a reader sees the old file or the
new one, never half. ``last.pt``'s previous version is kept as ``last.prev.pt`` (a hard link, made before
the rename: at every moment both names hold an intact file), so a ``last.pt`` damaged after it was
written still leaves a checkpoint to resume from (:func:`load_latest`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from research.files import write_atomic
from research.safe_load import CheckpointError, UnsafeCheckpointError, safe_load

__all__ = ["BEST", "LAST", "PREVIOUS", "CheckpointError", "DiskFull", "load", "load_latest", "no_space", "save_atomic", "writing"]

log = logging.getLogger(__name__)

LAST = "last.pt"
PREVIOUS = "last.prev.pt"
BEST = "best.pt"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_TRAINING_STATE = ("model", "optimizer", "epoch", "step", "rng")  # what a resume cannot do without


class DiskFull(CheckpointError):
    """A run's file could not be written for lack of space or quota: one line naming the file (exit 1:
    the command was right, the disk was not); what was written before is intact."""


@contextlib.contextmanager
def writing(file: Path) -> Iterator[None]:
    """Within the block, a full disk or quota raises :class:`DiskFull` naming ``file``."""
    try:
        yield
    except OSError as exc:
        if not no_space(exc):
            raise
        raise DiskFull(
            f"cannot write {file}: no space left on the device; free space there, or set output_dir to a "
            "disk with room, then run the same command again to resume"
        ) from exc


def save_atomic(payload: Mapping[str, Any], path: Path, *, previous: Path | None = None) -> None:
    """``torch.save`` into ``path`` so that a reader sees the old file or the new one, never half
    (:func:`research.files.write_atomic`).

    Args:
        payload: What to save (tensors and plain data).
        path: The checkpoint file.
        previous: Where the file ``path`` held until now is kept, if it existed.

    Raises:
        DiskFull: The disk or quota is full (one line naming the file); the old file is intact.
        OSError: Writing failed otherwise; the old file is intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(handle: BinaryIO) -> None:
        torch.save(dict(payload), handle)
        if previous is not None and path.exists():  # written, before it replaces the old: link the old in one step
            link = previous.with_name(f".{previous.name}.{uuid.uuid4().hex[:8]}.tmp")
            os.link(path, link)
            os.replace(link, previous)

    try:
        write_atomic(path, save)
    except BaseException as exc:
        if no_space(exc):
            raise DiskFull(
                f"cannot write checkpoint {path}: no space left on the device (any previous {path.name} is "
                "intact); free space there, or set output_dir to a disk with room, then run again to resume"
            ) from exc
        raise


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint without running code from it (see :func:`research.safe_load.safe_load`).

    Raises:
        CheckpointError: One line naming the file: missing, unreadable, or pickled code.
    """
    saved = safe_load(path)
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path}: holds a {type(saved).__name__}, expected a dict written by torch.save")
    return saved


def load_latest(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint of a run dir: ``last.pt``, else ``last.prev.pt`` (with a warning).

    Returns:
        The file read and what it holds; None when the run dir has neither file.

    Raises:
        UnsafeCheckpointError: A file pickles code (refused, never skipped over).
        CheckpointError: Checkpoints are there but none is intact (the message names each file);
            ``--force`` starts the run clean.
    """
    problems = []
    for file in (run_dir / LAST, run_dir / PREVIOUS):
        if not file.exists():
            continue
        try:
            saved = _load_training_state(file)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if problems:
            log.warning("%s; resuming from the previous checkpoint %s (epoch %s)", problems[0], file, saved["epoch"])
        return file, saved
    if problems:
        raise CheckpointError(
            f"{'; '.join(problems)}; no intact checkpoint to resume from: train again with --force to start clean"
        )
    return None


def _load_training_state(file: Path) -> dict[str, Any]:
    saved = load(file)
    missing = [key for key in _TRAINING_STATE if key not in saved]
    if missing:
        raise CheckpointError(f"checkpoint {file}: holds no training state (no {', '.join(missing)})")
    return saved


def no_space(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from, is a full disk or quota (torch's writer raises a
    RuntimeError "unexpected pos" over the OSError of the failed write)."""
    seen = set()
    while exc is not None and id(exc) not in seen:  # a chain can loop back on itself
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def rng_states() -> dict[str, Any]:
    """Every process-level generator's state, as tensors and plain data (``weights_only`` loads it)."""
    numpy_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    kind, keys, position, has_gauss, cached_gaussian = numpy_state
    states: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of 625 ints, None)
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, *rest = states["numpy"]
    # an older checkpoint holds numpy's uint32 array itself, a newer one an int64 tensor of its values
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
