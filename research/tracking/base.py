"""What every experiment tracker shares: the run description, the ``Tracker`` protocol, config flattening,
and the guard that keeps a broken logger from stopping a training run.

A tracker is an observer: losing some curves is cheaper than losing a multi-day run, so
:class:`GuardedTracker` turns the first exception of a tracker into one warning and makes the tracker a
no-op for the rest of the run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DEFAULT_PROJECT",
    "GuardedTracker",
    "RunInfo",
    "Tracker",
    "TrackerWarning",
    "as_number",
    "flatten_config",
    "warn_once_disabled",
]


DEFAULT_PROJECT = "deit"  # the W&B project of a run whose logger: section names none


class TrackerWarning(RuntimeWarning):
    """A tracker failed and was switched off; training goes on without it."""


@dataclass(frozen=True)
class RunInfo:
    """What a tracker needs to know about the run it records (built by the engine).

    Attributes:
        run_dir: the run's output directory; trackers keep their files and resume state here.
        project: the tracking project (the W&B project), e.g. ``"deit"``.
        group: the experiment name, shared by all its variants, e.g. ``"ablate_mixup"``.
        name: this variant's run name, e.g. ``"ablate_mixup/mixup=0"``.
        job_type: the variant without its seed (``"no_mixup"``), so W&B groups a variant's seeds; for a
            run without variants the config's ``job_type`` (``"train"``, ``"teacher"``, ...).
        tags: the techniques that are on in this run, e.g. ``("mixup", "distill-hard")``.
        config: the fully resolved, nested config (plus ``git_commit`` and ``n_parameters``).
        is_rank_zero: only rank 0 of a distributed job logs; other ranks get a no-op tracker.
        life: which start of the run this is (1, then one more per resume or requeue), as recorded in
            the run dir's ``lives.jsonl``.
        lives: the run's lives as ``lives.jsonl`` recorded them so far. A tracker writes no file of the
            engine's there: what a life records it hands back (its ``notes``: :class:`WandbTracker`'s).
        notes: what the run is for, shown with it (W&B notes): the experiment file's header comment.
    """

    run_dir: Path
    project: str
    group: str
    name: str
    job_type: str = "train"
    tags: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    is_rank_zero: bool = True
    life: int = 1
    lives: tuple[Mapping[str, Any], ...] = ()
    notes: str = ""


@runtime_checkable
class Tracker(Protocol):
    """Records one run's metrics. Only rank 0 holds a real tracker."""

    def log(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Record scalars such as ``{"train/loss": 2.3, "train/lr": 1e-3}`` at optimizer step ``step``."""

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run-level results, e.g. best and last top-1, epochs done, wall time."""

    def close(self) -> None:
        """Flush and release the tracker; calling it twice is harmless."""


def as_number(value: Any) -> int | float:
    """A plain Python number from an int, float, bool, NumPy scalar or one-element tensor.

    Raises:
        TypeError: ``value`` is not a scalar (e.g. a tensor with several elements).
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    item = getattr(value, "item", None)  # one-element torch.Tensor, NumPy scalar
    if callable(item):
        value = item()
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else float(value)
    return float(value)


def flatten_config(cfg: Mapping[str, Any], *, sep: str = ".") -> dict[str, Any]:
    """Flatten a nested config into dotted keys: ``{"optim": {"lr": 5e-4}}`` -> ``{"optim.lr": 5e-4}``.

    Flat keys let the W&B UI filter and group runs by any hyper-parameter (``optim.lr``) and let two
    runs' configs be diffed key by key. Lists stay lists (their mappings are flattened inside them),
    ``Path`` and other non-JSON leaves become strings, and empty mappings disappear (they set nothing).
    Works on OmegaConf ``DictConfig`` too, which is a ``Mapping``.

    Args:
        cfg: the nested config.
        sep: the separator between levels.

    Returns:
        A new flat dict, in the config's key order.
    """
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                visit(f"{prefix}{sep}{key}" if prefix else str(key), sub)
        else:
            flat[prefix] = _leaf(value, sep)

    visit("", cfg)
    return flat


def _leaf(value: Any, sep: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN / inf
    if isinstance(value, Mapping):
        return flatten_config(value, sep=sep)
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [_leaf(item, sep) for item in value]
    return str(value)


class GuardedTracker:
    """Wraps a tracker so that its first exception becomes one :class:`TrackerWarning`.

    After a failure (disk full, W&B service died, a bad value) the tracker is switched off: ``log`` and
    ``summary`` do nothing, and ``close`` still tries to release the inner tracker, silently.
    ``BaseException``s that are not ``Exception``s (KeyboardInterrupt, SystemExit) still propagate.

    Args:
        inner: the tracker doing the work.
        name: the logger's registry name, for the warning.
    """

    def __init__(self, inner: Tracker, *, name: str) -> None:
        self.inner = inner
        self.name = name
        self.failed = False
        self._closed = False

    def log(self, metrics: Mapping[str, float], *, step: int) -> None:
        if not self.failed and not self._closed:
            self._call("log", lambda: self.inner.log(metrics, step=step))

    def summary(self, values: Mapping[str, Any]) -> None:
        if not self.failed and not self._closed:
            self._call("summary", lambda: self.inner.summary(values))

    def images(self, key: str, grid: Any, *, step: int, caption: str = "") -> bool:
        """Forward an image grid to a tracker that takes images (an optional method: W&B's); returns
        whether it was logged."""
        if self.failed or self._closed or not callable(getattr(self.inner, "images", None)):
            return False
        self._call("images", lambda: self.inner.images(key, grid, step=step, caption=caption))  # type: ignore[attr-defined]
        return not self.failed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.failed:
            self._call("close", self.inner.close)
            return
        try:  # already warned once; release what can be released, quietly
            self.inner.close()
        except Exception:
            pass

    def _call(self, method: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:
            self.failed = True
            warn_once_disabled(self.name, f"{method}() raised {type(exc).__name__}: {exc}")

    def __repr__(self) -> str:
        state = "failed" if self.failed else "closed" if self._closed else "active"
        return f"GuardedTracker({self.inner!r}, {state})"


def warn_once_disabled(name: str, reason: str) -> None:
    """The single warning a tracker gives when it is switched off."""
    warnings.warn(
        f"{name} logger disabled: {reason}. Training continues without it; "
        "the run's checkpoints and stdout are unaffected.",
        TrackerWarning,
        stacklevel=3,
    )
