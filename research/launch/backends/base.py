"""What the submission pipeline (research.launch.submit) needs from a launcher backend: it plans the
runs, checks their run dirs, takes the locks, snapshots the code and records each job; a backend does
the rest (the methods of :class:`Backend`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from research.config import Run
from research.registry import BACKENDS


@dataclass(frozen=True)
class Group:
    """Runs submitted together as one array: the same experiment, options and dependencies."""

    runs: Sequence[Run]
    options: dict[str, Any]  # Backend.options of every run of the group
    depends_on: tuple[str, ...]  # job ids to finish first (teachers); "<run name>" in a dry run
    folder: Path  # the backend's files for the experiment (logs, scripts): the owner's only
    launch_dir: Path  # relative paths in the configs are relative to it
    env: dict[str, str] = field(default_factory=dict)  # variables the jobs get: the code's git provenance
    umask: int = 0o022  # the user's (the submission runs under 077): the jobs' own files follow it


class Backend(ABC):
    """A launcher backend, registered in ``research.registry.BACKENDS`` (its builder takes no arguments)."""

    def check_client(self) -> None:
        """Raise a ConfigError when this machine cannot submit (before anything is written)."""
        return None

    @abstractmethod
    def options(self, run: Run) -> dict[str, Any]:
        """The submission options of ``run``: its resources in the backend's words (JSON-able)."""

    @abstractmethod
    def header(self, group: Group) -> str:
        """What the submission of ``group`` would say, for ``--dry-run`` (needs no scheduler)."""

    @abstractmethod
    def submit(self, group: Group) -> list[str]:
        """Submit ``group``; the job id of each run, in order."""

    def job_state(self, job_id: str) -> str | None:
        """A recorded job's state while it is queued or running, None once it has gone; a ConfigError
        when the scheduler cannot tell (a job taken for gone would be submitted twice)."""
        return None

    def current_job(self) -> str | None:
        """On a job's node, its job id (its lock and ``lives.jsonl`` name it); None elsewhere."""
        return None

    def stop_state(self) -> str | None:
        """How the scheduler ends this job as it stops (``CANCELLED``, ``REQUEUED``, ...), for its summary."""
        return None


def backend_of(run: Run) -> Backend:
    """The backend that runs ``run`` (its ``resources.backend``)."""
    return BACKENDS.build(run.cfg.resources.backend)
