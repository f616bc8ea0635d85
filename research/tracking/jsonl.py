"""A dependency-free tracker: one JSON object per ``log`` call, appended to ``<run_dir>/log.jsonl``.

Appending (never truncating) keeps the lines of every life of a requeued run; a life that restarts
from an older checkpoint logs some steps again, and readers keep the last line of a step.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from research.files import write_atomic
from research.registry import LOGGERS
from research.tracking.base import GuardedTracker, RunInfo, Tracker, as_number, warn_once_disabled
from research.tracking.null import NullTracker

__all__ = ["JsonlTracker", "build_jsonl"]

LOG_FILE = "log.jsonl"
SUMMARY_FILE = "log_summary.json"  # summary.json is the engine's


class JsonlTracker:
    """Appends ``{"step": ..., "timestamp": ..., <metrics>}`` lines; ``summary`` merges into a JSON file.

    Args:
        log_path: the JSON-lines file, created if missing, appended to otherwise.
        summary_path: the summary file, rewritten atomically on each ``summary`` call.
    """

    def __init__(self, log_path: Path, summary_path: Path) -> None:
        self.log_path = Path(log_path)
        self.summary_path = Path(summary_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.log_path.open("a", encoding="utf-8")

    def log(self, metrics: Mapping[str, float], *, step: int) -> None:
        if self._file is None:
            raise RuntimeError(f"log() after close() on {self.log_path}")
        record = {"step": int(step), "timestamp": round(time.time(), 3)}
        record.update({key: as_number(value) for key, value in metrics.items()})
        # strict JSON: NaN and infinities (which json.dumps writes bare) become null
        record = {key: None if isinstance(v, float) and not math.isfinite(v) else v for key, v in record.items()}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()  # a killed job keeps every line written so far

    def summary(self, values: Mapping[str, Any]) -> None:
        merged = json.loads(self.summary_path.read_text(encoding="utf-8")) if self.summary_path.exists() else {}
        merged.update(values)
        write_atomic(self.summary_path, json.dumps(merged, indent=2, default=str) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self) -> str:
        return f"JsonlTracker({str(self.log_path)!r})"


@LOGGERS.register("jsonl")
def build_jsonl(*, run: RunInfo) -> Tracker:
    """Log to ``<run_dir>/log.jsonl`` and ``<run_dir>/log_summary.json`` (no account, no network).

    Args:
        run: injected by the engine.

    Returns:
        The tracker on rank 0, a no-op tracker elsewhere or when the run dir is not writable.
    """
    if not run.is_rank_zero:
        return NullTracker()
    run_dir = Path(run.run_dir)
    try:
        inner = JsonlTracker(run_dir / LOG_FILE, run_dir / SUMMARY_FILE)
    except OSError as exc:
        warn_once_disabled("jsonl", f"cannot open {run_dir / LOG_FILE}: {exc}")
        return NullTracker()
    return GuardedTracker(inner, name="jsonl")
