"""Submitting an experiment's runs to SLURM through submitit.

Every run that is not finished becomes one task of a job array (runs with equal resources share an
array). A run whose teacher (or fine-tuning source) comes from another experiment waits for that
experiment's job (``afterok``). Each submitted job id is recorded in its run dir, so a relaunch skips
runs that are finished or still queued/running, and resubmits the rest, which resume from their
checkpoints (a run dir trained with another config stops the launcher before it submits anything).
The code is snapshotted at submission (submitit's ``RsyncSnapshot``) so a requeued job
runs what was submitted.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import yaml

from research.config import ConfigError, Run, slurm_minutes
from research.config.schema import SlurmCfg
from research.engine.run_dir import CONFIG
from research.launch import provenance
from research.launch.job import TrainJob
from research.launch.run_check import DONE_ACTION, REPLACE, Verdict, config_record, plan, prepare, with_prerequisites

JOB_FILE = "slurm_job.json"
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD", "RESIZING"}


class SlurmUnavailable(ConfigError):
    """No SLURM client on this machine."""


class SubmissionRefused(ConfigError):
    """sbatch refused a job; the message holds sbatch's own words and the variants concerned.

    A :class:`ConfigError`: the fix is in the experiment's ``slurm:`` section (partition, account,
    time, ...), so the launcher reports it in one line with exit status 2, like other bad input.
    """


@dataclass
class Row:
    """One line of the launcher's table."""

    run: Run
    action: str  # submitted | finished | queued | would submit
    job_id: str | None = None
    depends_on: tuple[str, ...] = ()
    sbatch: str = ""  # the sbatch header, for --dry-run


def executor_parameters(slurm: SlurmCfg, job_name: str) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters (sbatch's vocabulary) for a run's ``slurm:`` section."""
    gpus = slurm.gpus_per_node
    if gpus and slurm.tasks_per_node not in (None, gpus):
        raise ConfigError(
            f"slurm.tasks_per_node={slurm.tasks_per_node} but slurm.gpus_per_node={gpus}: DDP runs one task per GPU; "
            "leave tasks_per_node unset on GPU nodes"
        )
    if slurm.gpu_type and not gpus:
        raise ConfigError(f"slurm.gpu_type={slurm.gpu_type} asks for GPUs of that type: set slurm.gpus_per_node (1 or more)")
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": slurm_minutes(slurm.time),
        "nodes": slurm.nodes,
        "ntasks_per_node": gpus or slurm.tasks_per_node or 1,
        "cpus_per_task": slurm.cpus_per_task,
        "array_parallelism": slurm.array_parallelism,
        "partition": slurm.partition,
        "account": slurm.account,
        "qos": slurm.qos,
        "constraint": slurm.constraint,
        # sbatch --gpus-per-node=h200:1 asks for that GPU type
        "gpus_per_node": (f"{slurm.gpu_type}:{gpus}" if slurm.gpu_type else gpus) or None,
        "mem": f"{int(slurm.mem_gb * 1024)}MB" if slurm.mem_gb else None,
        "setup": list(slurm.setup) or None,
        # a student whose teacher failed is cancelled rather than left pending forever; slurm.extra can say otherwise
        "additional_parameters": {"kill_on_invalid_dep": "yes", **slurm.extra},
    }
    return {key: value for key, value in params.items() if value is not None}


def launch(runs: Sequence[Run], *, force: bool = False, dry_run: bool = False, snapshot: bool = True) -> list[Row]:
    """Submit what is not finished (teachers first); returns a row per run, prerequisites included.

    Every run is checked against its run dir before anything is submitted (research.launch.run_check).
    Launchers on the same output dirs take turns (a lock file per output dir), so two started at the
    same instant submit each run once.
    """
    if not dry_run and shutil.which("sbatch") is None:
        raise SlurmUnavailable(
            "no SLURM here (sbatch not found): use --dry-run to see the jobs, or launchers/local.py to run them on this machine"
        )
    output_dirs = {Path(run.cfg.output_dir) for run in with_prerequisites(runs)}
    with _submission_lock(output_dirs, enabled=not dry_run):
        verdicts = plan(runs, force=force)
        active = {} if dry_run else _active_jobs(verdicts)
        if not dry_run:
            prepare(verdicts)
        rows: list[Row] = []
        job_ids: dict[Path, str] = {}
        by_dir = {verdict.run.run_dir: verdict for verdict in verdicts}
        for layer in _layers([verdict.run for verdict in verdicts]):
            pending = []
            for run in layer:
                row = _existing(by_dir[run.run_dir], active)
                if row is not None:
                    rows.append(row)
                    if row.job_id and row.action == "queued":
                        job_ids[run.run_dir] = row.job_id
                    continue
                deps = tuple(sorted({job_ids[p.run_dir] for p in run.prerequisites() if p.run_dir in job_ids}))
                pending.append(Row(run, "would submit" if dry_run else "submitted", depends_on=deps))
            for group in _arrays(pending):
                _submit(group, dry_run=dry_run, snapshot=snapshot)
                # --dry-run has no job ids: a placeholder naming the run still shows its students' dependency.
                job_ids.update({row.run.run_dir: row.job_id or f"<{row.run.name}>" for row in group})
            rows.extend(pending)
    return rows


def _active_jobs(verdicts: Sequence[Verdict]) -> dict[Path, tuple[str, str]]:
    """``{run dir: (job id, state)}`` of runs whose recorded job is still queued or running. A run to
    be replaced (--force) while its job is alive is refused: the job would write into the new run."""
    active = {}
    for verdict in verdicts:
        job_id = recorded_job(verdict.run.run_dir)
        state = job_state(job_id) if job_id else None
        if job_id and state in ACTIVE_STATES:
            active[verdict.run.run_dir] = (job_id, state)
    busy = [
        f"{v.run.name} (job {active[v.run.run_dir][0]}, {active[v.run.run_dir][1]})"
        for v in verdicts
        if v.action == REPLACE and v.run.run_dir in active
    ]
    if busy:
        jobs = " ".join(active[v.run.run_dir][0] for v in verdicts if v.action == REPLACE and v.run.run_dir in active)
        raise ConfigError(f"cannot replace runs whose job is still alive: {', '.join(busy)}; scancel {jobs} first")
    return active


def _existing(verdict: Verdict, active: dict[Path, tuple[str, str]]) -> Row | None:
    """A row for a run that needs no submission (finished, or its job still queued/running)."""
    run = verdict.run
    if verdict.action == DONE_ACTION:
        return Row(run, "finished")
    if run.run_dir in active:
        return Row(run, "queued", active[run.run_dir][0])
    return None


@contextlib.contextmanager
def _submission_lock(output_dirs: set[Path], *, enabled: bool) -> Iterator[None]:
    """One launcher at a time per output dir (flock; released when the launcher exits, however)."""
    with contextlib.ExitStack() as stack:
        for folder in sorted(output_dirs) if enabled else []:  # always in one order: no deadlock
            folder.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(open(folder / ".submit.lock", "a"))
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another launcher submitting into {folder} ...", file=sys.stderr)
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def _layers(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by dependency depth: teachers, then their students, ..."""
    depth: dict[Path, int] = {}
    for run in runs:  # prerequisites come first in ``runs``
        depth[run.run_dir] = 1 + max((depth.get(p.run_dir, -1) for p in run.prerequisites()), default=-1)
    return [[run for run in runs if depth[run.run_dir] == level] for level in sorted(set(depth.values()))]


def _arrays(rows: list[Row]) -> Iterator[list[Row]]:
    """Rows that can share one job array: same experiment, resources and dependencies."""

    def key(row: Row) -> str:
        params = executor_parameters(row.run.cfg.slurm, row.run.experiment)
        return json.dumps([row.run.experiment, params, row.depends_on, row.run.cfg.slurm.max_requeues], sort_keys=True)

    for _, group in itertools.groupby(sorted(rows, key=key), key=key):
        yield list(group)


def _submit(rows: list[Row], *, dry_run: bool, snapshot: bool) -> None:
    first = rows[0].run
    params = executor_parameters(first.cfg.slurm, first.experiment)
    if rows[0].depends_on:
        params["dependency"] = "afterok:" + ":".join(rows[0].depends_on)
    folder = Path(first.cfg.output_dir) / first.experiment / ".slurm"
    if dry_run:
        header = _sbatch_header(params, folder, len(rows))
        for row in rows:
            row.sbatch = header
        return
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=first.cfg.slurm.max_requeues)
    executor.update_parameters(**params)
    launch_dir = os.getcwd()
    # sbatch passes our environment on to the job, which runs from a snapshot without our .git.
    with _environ(provenance.git_env()), _snapshot(Path(first.cfg.output_dir), first.experiment, enabled=snapshot):
        try:
            with executor.batch():
                jobs = [executor.submit(TrainJob(row.run, launch_dir)) for row in rows]
        except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as exc:
            detail = getattr(exc, "stderr", None) or getattr(exc, "output", None) or str(exc)
            detail = detail.decode() if isinstance(detail, bytes) else str(detail)
            names = ", ".join(row.run.name for row in rows)
            raise SubmissionRefused(f"sbatch refused the job for {names}: {detail.strip()}") from None
    for row, job in zip(rows, jobs):
        row.job_id = job.job_id
        _record_job(row.run.run_dir, job.job_id)
        _record_config(row.run)


@contextlib.contextmanager
def _environ(variables: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the submission only (``launch`` may be called from a library)."""
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _snapshot(output_dir: Path, experiment: str, *, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    if not submitit.helpers.RsyncSnapshot.available():
        raise ConfigError("snapshotting the code needs rsync and git (apt-get install rsync), or pass --no-snapshot")
    target = output_dir / experiment / ".code" / time.strftime("%Y%m%d-%H%M%S")
    root = Path(provenance.__file__).resolve().parents[2]
    with submitit.helpers.RsyncSnapshot(snapshot_dir=target, root_dir=root):
        yield


def _sbatch_header(params: dict[str, Any], folder: Path, count: int) -> str:
    """The ``#SBATCH`` lines submitit would write, for ``--dry-run`` (works without SLURM)."""
    from submitit.slurm.slurm import _make_sbatch_string

    text = _make_sbatch_string(command="<python -m submitit.core._submit>", folder=folder / "%j", map_count=count, **params)
    return "\n".join(line for line in text.splitlines() if line.startswith("#SBATCH"))


def _record_job(run_dir: Path, job_id: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / JOB_FILE).write_text(json.dumps({"job_id": job_id, "submitted": time.time()}) + "\n")


def _record_config(run: Run) -> None:
    """A queued run's ``config.yaml`` (unless a life already wrote it): a relaunch with another config
    is then refused even before the job starts."""
    file = run.run_dir / CONFIG
    if not file.exists():
        file.write_text(yaml.safe_dump(config_record(run), sort_keys=False))


def recorded_job(run_dir: Path) -> str | None:
    file = run_dir / JOB_FILE
    return json.loads(file.read_text())["job_id"] if file.exists() else None


def job_state(job_id: str) -> str | None:
    """The job's state from squeue (None once it has left the queue)."""
    result = subprocess.run(
        ["squeue", "--noheader", "--format=%T", "--jobs", job_id], capture_output=True, text=True, check=False
    )
    states = result.stdout.split()
    return states[0] if result.returncode == 0 and states else None
