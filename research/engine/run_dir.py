"""The files of one run: checkpoints, ``metrics.jsonl`` (one line per epoch, the source of truth for
reports), ``summary.json`` (status and final numbers), and where a run stands, read from them alone
(no scheduler needed). Only the main process writes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from research.engine import checkpoint
from research.engine.state import TrainState

DONE, FAILED, RUNNING, NOT_STARTED = "done", "failed", "running", "not started"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"


class RunDir:
    """Writes a run's files; reads back its last checkpoint for a resume."""

    def __init__(self, path: Path, *, config: dict[str, Any], is_main: bool = True) -> None:
        self.path, self.config, self.is_main = Path(path), config, is_main

    @property
    def last(self) -> Path:
        return self.path / checkpoint.LAST

    @property
    def best(self) -> Path:
        return self.path / checkpoint.BEST

    def save(self, state: TrainState, *, best: bool = False) -> None:
        if not self.is_main:
            return
        payload = state.state_dict(self.config)
        checkpoint.save_atomic(payload, self.last)
        if best:
            checkpoint.save_atomic(payload, self.best)

    def resume_point(self) -> dict[str, Any] | None:
        return checkpoint.load(self.last) if self.last.exists() else None

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        if self.is_main:
            with open(self.path / METRICS, "a") as handle:
                handle.write(json.dumps(dict(record)) + "\n")

    def truncate_metrics(self, epochs_done: int) -> None:
        """Drop epoch records past the checkpoint being resumed (written after it, then lost)."""
        file = self.path / METRICS
        if not self.is_main or not file.exists():
            return
        kept = [line for line in file.read_text().splitlines() if line and json.loads(line)["epoch"] <= epochs_done]
        _write_atomic(file, "".join(line + "\n" for line in kept))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if self.is_main:
            _write_atomic(self.path / SUMMARY, json.dumps({**summary, "updated": time.time()}, indent=1) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    file = Path(run_dir) / SUMMARY
    return json.loads(file.read_text()) if file.exists() else None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    file = Path(run_dir) / METRICS
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def _write_atomic(file: Path, text: str) -> None:
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, file)


def run_status(run_dir: Path) -> str:
    """``done`` / ``failed`` / ``running`` (started, unfinished: running, queued or preempted) / ``not started``."""
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") == DONE and summary["epochs_done"] >= summary["epochs"]:
        return DONE
    if summary is not None and summary.get("status") == FAILED:
        return FAILED
    if summary is not None or (Path(run_dir) / checkpoint.LAST).exists():
        return RUNNING
    return NOT_STARTED


def is_done(run_dir: Path) -> bool:
    return run_status(run_dir) == DONE
