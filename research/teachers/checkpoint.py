"""Reading teacher checkpoints, with errors that name the file and the problem.

Accepted layouts: a plain state dict; ``{"model": state_dict, ...}`` (official DeiT teachers and this
package's engine, which also stores ``"ema"`` and ``"config"``; ``"model"`` wins); ``{"state_dict": ...}``
(timm's ``train.py``). A ``module.`` prefix left by DistributedDataParallel is stripped. Weights load
with ``strict=True``: a partial load would give a silently wrong teacher. Files are read with
:func:`research.safe_load.safe_load`, which runs no code a pickle names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from research.safe_load import CheckpointError, check_file, safe_load

__all__ = ["TeacherCheckpointError", "check_teacher_checkpoint", "load_teacher_weights", "read_state_dict", "teacher_digest"]

_WRAPPER_KEYS = ("model", "state_dict")  # in order of preference
_DDP_PREFIX = "module."
_SHOWN_KEYS = 5
_WHAT = "teacher checkpoint"


class TeacherCheckpointError(CheckpointError):
    """A teacher checkpoint is missing, unreadable, unsafe, or does not fit the requested teacher."""


def check_teacher_checkpoint(path: str) -> Path:
    """Cheap load-time check: ``path`` is an existing, readable file (its content is not read).

    Returns:
        The path as a ``Path``.

    Raises:
        TeacherCheckpointError: The file is missing, a directory, or not readable.
    """
    hint = "check the path (it must be visible from the machine that trains), or train the teacher first"
    try:
        return check_file(path, what=_WHAT, hint=hint)
    except CheckpointError as exc:
        raise TeacherCheckpointError(str(exc)) from None


def teacher_digest(path: str) -> str:
    """The SHA-256 of the teacher weights in ``path`` (names, dtypes, shapes and bytes of what
    :func:`read_state_dict` returns): the teacher's identity, which a path alone is not (a teacher
    retrained in place keeps its path). Not the file's bytes: a checkpoint also holds its wall time,
    so the same weights trained again would read as another teacher.

    Raises:
        TeacherCheckpointError: The file is missing, not a PyTorch checkpoint, or holds no state dict.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(read_state_dict(path).items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The teacher weights stored in ``path``, on CPU, without a DDP ``module.`` prefix.

    Raises:
        TeacherCheckpointError: The file is missing, not a PyTorch checkpoint, or holds no state dict.
    """
    check_teacher_checkpoint(path)
    obj = _load_data_only(path)
    state = _unwrap(obj, path)
    return _strip_prefix(state)


def load_teacher_weights(net: nn.Module, path: str, *, teacher: str, num_classes: int) -> None:
    """Load ``path`` into ``net`` with ``strict=True``, explaining any mismatch first.

    Args:
        net: The freshly built teacher network.
        path: Checkpoint file.
        teacher: The teacher's registry name, for the error message.
        num_classes: The dataset's class count ``net`` was built with.

    Raises:
        TeacherCheckpointError: Unreadable file, a different architecture, or a head for another
            number of classes.
    """
    state = read_state_dict(path)
    problem = _mismatch(state, net.state_dict(), num_classes=num_classes)
    if problem:
        raise TeacherCheckpointError(f"teacher checkpoint {path} does not fit teacher {teacher!r}: {problem}")
    net.load_state_dict(state, strict=True)


def _mismatch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], *, num_classes: int) -> str:
    """Why ``state`` cannot load into a model whose state dict is ``expected`` ("" if it can)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        return (
            f"{_some('missing', missing)}; {_some('unexpected', unexpected)}. Was it trained as another "
            "architecture? Use the teacher name it was trained as"
        )
    mismatched = [k for k in expected if state[k].shape != expected[k].shape]
    head_classes = {_head_classes(state[k], expected[k], num_classes) for k in mismatched}
    if mismatched and None not in head_classes and len(head_classes) == 1:
        return (
            f"checkpoint has a {head_classes.pop()}-class head, the dataset has {num_classes} classes; "
            "use a teacher trained on this dataset"
        )
    if mismatched:
        shown = mismatched[:_SHOWN_KEYS]
        shapes = ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in shown)
        return (
            f"{len(mismatched)} tensors have other shapes (checkpoint vs model: {shapes}); was it trained "
            "with another width or variant?"
        )
    return ""


def _load_data_only(path: str) -> object:
    """What ``path`` holds, read without running pickled code (:func:`research.safe_load.safe_load`)."""
    try:
        return safe_load(path, what=_WHAT)
    except CheckpointError as exc:
        raise TeacherCheckpointError(str(exc)) from exc


def _unwrap(obj: object, path: str) -> Mapping[str, object]:
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise TeacherCheckpointError(
            f"teacher checkpoint {path}: holds a {type(obj).__name__}, expected a state dict or "
            f"a dict with a 'model' state dict"
        )
    non_tensors = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise TeacherCheckpointError(
            f"teacher checkpoint {path}: not a state dict, {_some('non-tensor', non_tensors)}; expected "
            "parameter names mapped to tensors, or a dict with a 'model' state dict"
        )
    return obj


def _strip_prefix(state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    # DDP saves every key as "module.<name>" when the wrapper itself is saved.
    if all(k.startswith(_DDP_PREFIX) for k in state):
        return {k[len(_DDP_PREFIX) :]: v for k, v in state.items()}  # type: ignore[misc]
    return dict(state)  # type: ignore[arg-type]


def _head_classes(saved: torch.Tensor, built: torch.Tensor, num_classes: int) -> int | None:
    """The checkpoint's class count if ``saved`` is a classifier weight/bias for another class count."""
    is_head = built.ndim >= 1 and built.shape[0] == num_classes and saved.shape[1:] == built.shape[1:]
    return int(saved.shape[0]) if is_head else None


def _some(what: str, keys: list[str]) -> str:
    if not keys:
        return f"no {what} keys"
    shown = ", ".join(keys[:_SHOWN_KEYS]) + (", ..." if len(keys) > _SHOWN_KEYS else "")
    return f"{len(keys)} {what} keys ({shown})"
