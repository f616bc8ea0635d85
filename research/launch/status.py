"""Where a run stands, read from its run dir alone (no scheduler needed)."""

from __future__ import annotations

from pathlib import Path

from research.engine.checkpoint import LAST
from research.engine.run_dir import read_summary

DONE, FAILED, RUNNING, NOT_STARTED = "done", "failed", "running", "not started"


def run_status(run_dir: Path) -> str:
    """``done`` / ``failed`` / ``running`` (started, unfinished: running, queued or preempted) / ``not started``."""
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") == DONE and summary["epochs_done"] >= summary["epochs"]:
        return DONE
    if summary is not None and summary.get("status") == FAILED:
        return FAILED
    if summary is not None or (Path(run_dir) / LAST).exists():
        return RUNNING
    return NOT_STARTED


def is_done(run_dir: Path) -> bool:
    return run_status(run_dir) == DONE
