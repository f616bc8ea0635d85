"""The files of one run dir, each with its one writer and reader here: checkpoints, ``config.yaml``
(the config that trained it), ``metrics.jsonl`` (one line per epoch, the source of truth for reports),
``summary.json`` (status and final numbers), ``lives.jsonl`` (one line per start of the run: a first
start, a resume, a SLURM requeue), the name of its lock (:mod:`research.launch.run_check` holds it),
and where a run stands, read from them alone (no scheduler needed). Only the main process writes,
each file by :func:`research.files.write_atomic`."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from research.engine import checkpoint
from research.engine.state import TrainState
from research.files import write_atomic

log = logging.getLogger(__name__)

# Where a run stands (run_status), and how a life that did not finish ended (summary.json's status)
DONE, FAILED, RUNNING, NOT_STARTED = "done", "failed", "running", "not started"
STOPPED, CANCELLED, INTERRUPTED = "stopped", "cancelled", "interrupted"
METRICS = "metrics.jsonl"
LIVES = "lives.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
LOCK = ".lock"

# research.files.write_atomic's temporary names (without the 8 hex digits: an older version's)
_LEFTOVER = re.compile(
    rf"\.({'|'.join(re.escape(n) for n in (checkpoint.LAST, checkpoint.PREVIOUS, checkpoint.BEST, METRICS, LIVES, SUMMARY, CONFIG))})"
    r"(\.[0-9a-f]{8})?\.tmp"
)


class RunDir:
    """Writes a run's files; reads back its last checkpoint for a resume."""

    def __init__(self, path: Path, *, config: dict[str, Any], is_main: bool = True) -> None:
        self.path, self.config, self.is_main = Path(path), config, is_main
        self._last_is_intact = True  # False after a resume that had to skip a damaged last.pt

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
        # a damaged last.pt is overwritten, never kept as the previous checkpoint
        previous = self.path / checkpoint.PREVIOUS if self._last_is_intact else None
        checkpoint.save_atomic(payload, self.last, previous=previous)
        self._last_is_intact = True
        if best:
            checkpoint.save_atomic(payload, self.best)

    def remove_leftovers(self) -> None:
        """Remove the temporary files that writes cut short by a kill left (``.last.pt.<id>.tmp``,
        ``.summary.json.tmp``, ...): only this module's and :mod:`checkpoint`'s names, and only by the
        holder of the run's lock (no other process writes them meanwhile)."""
        if not self.is_main:
            return
        left = [file for file in self.path.glob(".*.tmp") if _LEFTOVER.fullmatch(file.name)]
        for file in left:
            file.unlink(missing_ok=True)
        if left:
            log.warning("%s: removed %d temporary file(s) left by writes a kill cut short", self.path, len(left))

    def resume_point(self) -> dict[str, Any] | None:
        """The newest intact checkpoint (``last.pt``, else ``last.prev.pt``), or None in a new run dir."""
        found = checkpoint.load_latest(self.path)
        if found is None:
            return None
        self._last_is_intact = found[0] == self.last
        return found[1]

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """One strict JSON line: a non-finite number (a diverged validation loss) is written as null."""
        if self.is_main:
            strict = {key: None if isinstance(v, float) and not math.isfinite(v) else v for key, v in record.items()}
            with checkpoint.writing(self.path / METRICS), open(self.path / METRICS, "a") as handle:
                handle.write(json.dumps(strict, allow_nan=False) + "\n")

    def truncate_metrics(self, epochs_done: int) -> None:
        """Drop epoch records past the checkpoint being resumed (written after it, then lost), and a
        line cut short by a crash mid-write."""
        if not self.is_main or not (self.path / METRICS).exists():
            return
        kept = [record for record in read_metrics(self.path) if record["epoch"] <= epochs_done]
        _write_atomic(self.path / METRICS, "".join(json.dumps(record) + "\n" for record in kept))

    def write_summary(self, summary: Mapping[str, Any], *, ending: bool = False) -> None:
        """Write ``summary.json``; ``ending`` (a life that fails or stops): a failed write only warns, as the
        error that ends the life is the one to report (a full disk fails this write too)."""
        if not self.is_main:
            return
        try:
            _write_atomic(self.path / SUMMARY, json.dumps({**summary, "updated": time.time()}, indent=1) + "\n")
        except (OSError, checkpoint.DiskFull) as exc:
            if not ending:
                raise
            log.warning("%s: summary not written (%s)", self.path / SUMMARY, exc)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary; None when there is none, or when a crash left it empty or cut short (with a
    warning: where the run stands then comes from its checkpoint and its lock)."""
    file = Path(run_dir) / SUMMARY
    if not file.exists():
        return None
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        summary = None
    if not isinstance(summary, dict):
        log.warning("%s: not a summary (empty or cut short by a crash); ignored, the next life rewrites it", file)
        return None
    return summary


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records, oldest first; a line a crash cut short is left out, with a warning."""
    file = Path(run_dir) / METRICS
    if not file.exists():
        return []
    records = []
    for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and "epoch" in record:
            records.append(record)
        elif line.strip():
            log.warning("%s: line %d is cut short (a crash while it was written); left out", file, number)
    return records


def _write_atomic(file: Path, text: str) -> None:
    with checkpoint.writing(file):  # a full disk: one line naming the file
        write_atomic(file, text)


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run: any of its files."""
    return any((Path(run_dir) / name).exists() for name in (CONFIG, checkpoint.LAST, SUMMARY, METRICS, LIVES))


def write_config(run_dir: Path, record: Mapping[str, Any]) -> None:
    """Write ``config.yaml``: the record of the config that trains the run (research.launch.run_check.config_record)."""
    _write_atomic(Path(run_dir) / CONFIG, yaml.safe_dump(dict(record), sort_keys=False))


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The run dir's ``config.yaml``; None when it is missing or unreadable."""
    try:
        saved = yaml.safe_load((Path(run_dir) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return saved if isinstance(saved, dict) else None


def run_status(run_dir: Path) -> str:
    """``done`` (finished, and its ``last.pt`` is there) / ``failed`` / ``running`` (started, unfinished:
    running, queued, preempted or stopped) / ``not started``."""
    summary = read_summary(run_dir)
    finished = summary is not None and summary.get("status") == DONE and summary["epochs_done"] >= summary["epochs"]
    if finished and (Path(run_dir) / checkpoint.LAST).exists():  # its weights deleted: to train again
        return DONE
    if summary is not None and summary.get("status") == FAILED:
        return FAILED
    if summary is not None or (Path(run_dir) / checkpoint.LAST).exists():
        return RUNNING
    return NOT_STARTED


def read_lives(run_dir: Path) -> list[dict[str, Any]]:
    """The run's lives, oldest first: ``{"life": n, "started": t, "job_id": ...}`` plus what the launch
    pipeline noted (the tracker's W&B run, the lr schedule, the teacher's digest). A line cut short by a job killed mid-write still counts, as ``{"life": n}``."""
    file = Path(run_dir) / LIVES
    if not file.exists():
        return []
    lives = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            lives.append(json.loads(line))
        except json.JSONDecodeError:
            lives.append({"life": number})
    return lives


def start_life(run_dir: Path, **fields: Any) -> int:
    """Record a new life of the run (SLURM counts requeues by them); returns its number, from 1."""
    life = len(read_lives(run_dir)) + 1
    note_life(run_dir, life, started=round(time.time(), 3), **fields)
    return life


def note_life(run_dir: Path, life: int, **fields: Any) -> None:
    """Merge ``fields`` into life ``life``'s line, appending the line if it is not there yet."""
    lives = read_lives(run_dir)
    entry = next((e for e in lives if e.get("life") == life), None)
    if entry is None:
        lives.append({"life": life, **fields})
    else:
        entry.update(fields)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    _write_atomic(Path(run_dir) / LIVES, "".join(json.dumps(e) + "\n" for e in lives))
