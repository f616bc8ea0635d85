"""The no-op tracker: ``logger: {name: none}``, and what every logger gives ranks other than 0."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from research.registry import LOGGERS
from research.tracking.base import RunInfo

__all__ = ["NullTracker", "build_null"]


class NullTracker:
    """Records nothing."""

    def log(self, metrics: Mapping[str, float], *, step: int) -> None:
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "NullTracker()"


@LOGGERS.register("none")
def build_null(*, run: RunInfo) -> NullTracker:
    """No tracking (quick debugging runs, tests).

    Args:
        run: injected by the engine; unused.
    """
    del run
    return NullTracker()
