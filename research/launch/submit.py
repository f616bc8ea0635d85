"""Submitting an experiment's runs through a launcher backend (``resources.backend``: SLURM by default).

Every run that is not finished becomes one task of a job array (runs with equal resources share an
array), which the backend (research.launch.backends) submits in its own way. A run whose teacher (or
fine-tuning source) comes from another experiment waits for that experiment's job (``afterok``). Each
submitted job id is recorded in its run dir, so a relaunch skips runs that are finished or still
queued/running, and resubmits the rest, which resume from their checkpoints (a run dir trained with
another config stops the launcher before it submits anything). The code is snapshotted at submission
(submitit's ``RsyncSnapshot``) so a requeued job runs what was submitted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import submitit

from research.config import ConfigError, Run
from research.engine.run_dir import CONFIG, write_config
from research.files import flock
from research.launch import provenance
from research.launch.backends import Group, backend_of
from research.launch.run_check import (
    DONE_ACTION,
    REPLACE,
    Verdict,
    check_replaceable,
    config_record,
    plan,
    put_back,
    set_aside,
    with_prerequisites,
)
from research.registry import BACKENDS

log = logging.getLogger(__name__)

JOB_FILE = "slurm_job.json"  # the last job submitted for a run, and its backend (named when SLURM was the only one)


@dataclass
class Row:
    """One line of the launcher's table."""

    run: Run
    action: str  # submitted | finished | queued | would submit
    job_id: str | None = None
    depends_on: tuple[str, ...] = ()
    sbatch: str = ""  # the sbatch header, for --dry-run


def launch(runs: Sequence[Run], *, force: bool = False, dry_run: bool = False, snapshot: bool = True) -> list[Row]:
    """Submit what is not finished (teachers first), each run through its ``resources.backend``;
    returns a row per run, prerequisites included.

    Every run is checked against its run dir before anything is submitted (research.launch.run_check).
    Launchers on the same output dirs take turns (a lock file per output dir), so two started at the
    same instant submit each run once.
    """
    if not dry_run:
        for name in sorted({run.cfg.resources.backend for run in with_prerequisites(runs)}):
            BACKENDS.build(name).check_client()
    output_dirs = {Path(run.cfg.output_dir) for run in with_prerequisites(runs)}
    with _submission_lock(output_dirs, enabled=not dry_run):
        verdicts = plan(runs, force=force)
        _preflight_jobs([verdict.run for verdict in verdicts if verdict.action != DONE_ACTION])
        active = {} if dry_run else active_jobs(verdicts)
        if not dry_run:
            check_replaceable(verdicts)  # a run being trained now is refused before anything is submitted
        rows: list[Row] = []
        job_ids: dict[Path, str] = {}
        by_dir = {verdict.run.run_dir: verdict for verdict in verdicts}
        for layer in _layers([verdict.run for verdict in verdicts]):
            pending = []
            for run in layer:
                if by_dir[run.run_dir].action == DONE_ACTION:
                    rows.append(Row(run, "finished"))
                elif run.run_dir in active:
                    job_ids[run.run_dir] = active[run.run_dir][0]
                    rows.append(Row(run, "queued", job_ids[run.run_dir]))
                else:
                    deps = tuple(sorted({job_ids[p.run_dir] for p in run.prerequisites() if p.run_dir in job_ids}))
                    pending.append(Row(run, "would submit" if dry_run else "submitted", depends_on=deps))
            for group in _arrays(pending):
                replaced = [by_dir[row.run.run_dir] for row in group if by_dir[row.run.run_dir].action == REPLACE]
                _submit(group, dry_run=dry_run, snapshot=snapshot, replaced=replaced)
                # --dry-run has no job ids: a placeholder naming the run still shows its students' dependency.
                job_ids.update({row.run.run_dir: row.job_id or f"<{row.run.name}>" for row in group})
            rows.extend(pending)
        if dry_run:  # the header a finished run was (or with --force would be) submitted with
            for group in _arrays([row for row in rows if not row.sbatch]):
                _submit(group, dry_run=True, snapshot=False)
    return rows


def _preflight_jobs(runs: Sequence[Run]) -> None:
    """What each job's own node would refuse (fp16 without a GPU, a batch larger than each process's
    share of a dataset of known size, a teacher of another class count), before anything is written or
    queued; the data itself is checked by the job on its node, which may mount what this machine does not."""
    import torch

    from research.launch.preflight import preflight

    for run in runs:
        device = torch.device("cuda" if run.cfg.resources.gpus_per_node else "cpu")
        preflight([run], device=device, world_size=run.cfg.resources.processes(), check_data=False)


def active_jobs(verdicts: Sequence[Verdict]) -> dict[Path, tuple[str, str]]:
    """``{run dir: (job id, state)}`` of runs whose recorded job is still queued or running. A run to
    be replaced (--force, and ``research train --force``) while its job is alive is refused: the job
    would write into the new run, or die at its start. A state the backend cannot tell is refused too
    (research.launch.backends.Backend.job_state)."""
    active = {}
    for verdict in verdicts:
        file = verdict.run.run_dir / JOB_FILE
        if verdict.action == DONE_ACTION or not file.exists():  # finished: no job to ask about
            continue
        record = json.loads(file.read_text())
        job_id, backend = record["job_id"], record.get("backend", "slurm")  # slurm: a record older than backends
        state = BACKENDS.build(backend).job_state(job_id)
        if state is not None:
            active[verdict.run.run_dir] = (job_id, state)
    busy = [(v.run.name, *active[v.run.run_dir]) for v in verdicts if v.action == REPLACE and v.run.run_dir in active]
    if busy:
        named = ", ".join(f"{name} (job {job}, {state})" for name, job, state in busy)
        jobs = " ".join(job for _, job, _ in busy)
        raise ConfigError(f"cannot replace runs whose job is still alive: {named}; scancel {jobs} first")
    return active


@contextlib.contextmanager
def _submission_lock(output_dirs: set[Path], *, enabled: bool) -> Iterator[None]:
    """One launcher at a time per output dir (flock; released when the launcher exits, however).

    The lock files sit in the user's cache (``~/.cache/research/submit-locks``), one per output dir,
    so a launch that submits nothing leaves nothing in the output dir.
    """
    locks = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "research" / "submit-locks"
    with contextlib.ExitStack() as stack:
        for folder in sorted(output_dirs) if enabled else []:  # always in one order: no deadlock
            locks.mkdir(parents=True, exist_ok=True)
            key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:20]
            try:
                stack.enter_context(flock(locks / f"{key}.lock", wait=False))
            except BlockingIOError:
                print(f"waiting for another launcher submitting into {folder} ...", file=sys.stderr)
                stack.enter_context(flock(locks / f"{key}.lock"))
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
        run = row.run
        return json.dumps([run.experiment, run.cfg.resources.backend, backend_of(run).options(run), row.depends_on], sort_keys=True)

    for _, group in itertools.groupby(sorted(rows, key=key), key=key):
        yield list(group)


def _submit(rows: list[Row], *, dry_run: bool, snapshot: bool, replaced: Sequence[Verdict] = ()) -> None:
    """Submit ``rows`` as one job array; the run dirs of ``replaced`` move aside only for a submission
    that the backend accepts (a refused one puts them back)."""
    first = rows[0].run
    backend = backend_of(first)
    folder = Path(first.cfg.output_dir) / first.experiment / f".{first.cfg.resources.backend}"
    group = Group([row.run for row in rows], backend.options(first), rows[0].depends_on, folder, Path.cwd())
    if dry_run:
        header = backend.header(group)
        for row in rows:
            row.sbatch = header
        return
    # A refused submission leaves nothing behind: no snapshot, no submitit pickles, no empty dirs.
    with _undone_on_error(folder, replaced) as created:
        created.append(folder)  # its new files only: jobs submitted earlier keep their logs here
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _owner_only() as umask:
            folder.mkdir(exist_ok=True)
            folder.chmod(0o700)  # also a folder made before the launcher made it so
            extra = snapshot_extras(group.runs, launch_dir=group.launch_dir)
            # the job runs from a snapshot without our .git: the provenance goes in its environment
            group = dataclasses.replace(group, env=provenance.git_env(), umask=umask)
            with _snapshot(folder.parent, extra, created=created) if snapshot else contextlib.nullcontext():
                job_ids = backend.submit(group)
    for row, job_id in zip(rows, job_ids):
        row.job_id = job_id
        row.run.run_dir.mkdir(parents=True, exist_ok=True)
        record = {"job_id": job_id, "backend": first.cfg.resources.backend, "submitted": time.time()}
        (row.run.run_dir / JOB_FILE).write_text(json.dumps(record) + "\n")
        if not (row.run.run_dir / CONFIG).exists():  # unless a life wrote it: a relaunch with another config is refused now
            write_config(row.run.run_dir, config_record(row.run))


@contextlib.contextmanager
def _undone_on_error(folder: Path, replaced: Sequence[Verdict]) -> Iterator[list[Path]]:
    """Move the run dirs of ``replaced`` aside (research.launch.run_check.set_aside) for the block. If
    it raises (sbatch refused the job, the controller is down), remove what it made: each path it
    appends (of a dir that existed before, only the entries made since), and ``folder``'s parents (the
    experiment's dir, ...) that are new and left empty; then put the run dirs back where they were."""
    moved = [(v.run.run_dir, set_aside(v.run.run_dir)) for v in replaced if v.run.run_dir.exists()]
    created: list[Path] = []
    experiment_dir = folder.parent
    new_dirs = list(itertools.takewhile(lambda path: not path.exists(), [experiment_dir, *experiment_dir.parents]))
    before = {path: set(path.iterdir()) for path in (folder, experiment_dir / ".code") if path.is_dir()}
    try:
        yield created
    except BaseException:
        for path in reversed(created):
            for entry in set(path.iterdir()) - before[path] if path in before else [path]:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        for path in new_dirs:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        for run_dir, aside in moved:
            put_back(aside, run_dir)
        raise


@contextlib.contextmanager
def _owner_only() -> Iterator[int]:
    """Files and folders made in the block are the owner's only (umask 077), whatever the user's
    umask, which the block gets. submitit unpickles ``<job id>_submitted.pkl`` when the job starts:
    who could replace it, or the batch script, would run code as the job (README: a shared run folder)."""
    umask = os.umask(0o077)
    try:
        yield umask
    finally:
        os.umask(umask)


@contextlib.contextmanager
def _snapshot(experiment_dir: Path, extra: dict[str, Path], *, created: list[Path]) -> Iterator[None]:
    """Submit from a copy of the code: the git-tracked files, plus ``extra`` (its path there: the file)."""
    if not submitit.helpers.RsyncSnapshot.available():
        raise ConfigError("snapshotting the code needs rsync and git (apt-get install rsync), or pass --no-snapshot")
    code = experiment_dir / ".code"
    if not code.exists():
        created.append(code)
    code.mkdir(parents=True, exist_ok=True)
    # A new dir of our own: two launchers in the same second do not share one. It exists before
    # RsyncSnapshot starts, so RsyncSnapshot skips its `git clone` (and its "Cloning into" line): the
    # job needs the files, not a .git.
    target = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=code))
    created.append(target)
    with submitit.helpers.RsyncSnapshot(snapshot_dir=target, root_dir=code_root()):
        for relative, source in extra.items():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / relative)
        if extra:
            log.info("code snapshot %s: also holds the untracked %s", target, ", ".join(extra))
        yield


def code_root() -> Path:
    """The checkout the snapshot copies: the one holding this package."""
    return Path(provenance.__file__).resolve().parents[2]


def snapshot_extras(runs: Sequence[Run], *, launch_dir: Path) -> dict[str, Path]:
    """Files the snapshot must hold although git does not track them: their path in the snapshot,
    and the file to copy.

    These are the runs' experiment files when they sit untracked in the checkout, and the modules of
    their ``plugins:`` that sit untracked in the checkout or in the launch folder (the plugin loader
    imports from there). A plugin is copied at its module path (``mylab/models.py`` with
    ``mylab/__init__.py``): the job's imports come from the snapshot, so it runs the submitted copy.
    """
    root, launch_dir = code_root(), launch_dir.resolve()
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, text=True, check=False)
    tracked = set(listed.stdout.split("\0")) if listed.returncode == 0 else set()  # what RsyncSnapshot copies
    files: dict[str, Path] = {}
    for run in with_prerequisites(list(runs)):
        source = run.source.resolve()
        if source.is_relative_to(root):
            files[str(source.relative_to(root))] = source
        for module in run.cfg.plugins:
            for path, relative in _module_files(module):
                if path.is_relative_to(root) or path.is_relative_to(launch_dir):
                    files[relative] = path
    return {relative: path for relative, path in sorted(files.items()) if relative not in tracked}


def _module_files(module: str) -> list[tuple[Path, str]]:
    """An imported module's file and its packages' ``__init__.py`` files, each with its path relative
    to the folder the module was imported from (``mylab/models.py``); none for a namespace package."""
    found = []
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        imported = sys.modules.get(".".join(parts[:depth]))
        file = getattr(imported, "__file__", None)
        if file is None:
            continue
        path = Path(file).resolve()
        relative = Path(*parts[:depth]) / "__init__.py" if path.name == "__init__.py" else Path(*parts[: depth - 1], path.name)
        found.append((path, str(relative)))
    return found
