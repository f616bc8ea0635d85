"""Who may write a run dir, and with what: its config, its one writer, its teacher.

A run dir is its config: every relaunch, resume and skip is checked against the run dir's ``config.yaml``.

:func:`check` compares a run's resolved config with the one its run dir was trained with. A key that
changes training (:mod:`research.config.keys`) and differs makes the run a :class:`RunDirMismatch`:
the command stops before anything starts, naming each key with both values, and offers the two ways
on (``--force`` to replace the run, keeping the old dir aside; or another name, variant or output dir).
Keys that only say where and how the run executes may change; the life that changes them records
the change in ``lives.jsonl``. ``train.epochs`` may grow: a finished run then resumes and trains on.

``--force`` (and ``train.resume: false``) always start clean: the old run dir, whatever it holds, is
moved aside (:func:`set_aside`), never deleted.

One process writes a run dir at a time: rank 0 of the run holds its lock (:func:`run_dir_lock`) for the
life of the process. A distilling run resumes under the teacher it trained with, or not at all
(:func:`teacher_note`). What ``config.yaml`` says is :func:`resolved_config`; the files themselves are
:mod:`research.engine.run_dir`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import inspect
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from research.config import ConfigError, Run
from research.config.components import SECTIONS
from research.config.expand import format_value
from research.config.keys import EXTENSIBLE, execution_changes, training_changes
from research.config.sources import flatten
from research.engine.checkpoint import LAST, PREVIOUS, writing
from research.engine.run_dir import (
    CANCELLED,
    CONFIG,
    DONE,
    INTERRUPTED,
    LOCK,
    RUNNING,
    STOPPED,
    holds_run,
    read_config,
    read_lives,
    read_summary,
    run_status,
)
from research.files import flock
from research.launch import provenance
from research.registry import LOSSES
from research.teachers.checkpoint import teacher_digest

log = logging.getLogger(__name__)

NEW, RESUME, DONE_ACTION, REPLACE = "new", "resume", DONE, "replace"

TEACHER_KEY = "teacher_sha256"  # the field of a life's line in lives.jsonl


class RunDirMismatch(ConfigError):
    """The run dir was trained with another config (bad input: one line, exit 2)."""


class RunDirBusy(ConfigError):
    """Another process trains this run dir (bad input: exit 2, naming the holder)."""


class RunDirNotWritable(ConfigError):
    """The run dir cannot be written (read-only folder or file system): bad input, exit 2."""


class TeacherChanged(ConfigError):
    """The teacher checkpoint is not the one the run trained with so far (exit 2)."""


@dataclass(frozen=True)
class Verdict:
    """What a launcher does with a run: start it (``new``), continue it (``resume``, an extended
    run included), skip it (``done``), or move its old dir aside and start over (``replace``)."""

    run: Run
    action: str
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # execution keys that differ
    epochs_extended: tuple[int, int] | None = None


def shown_status(run_dir: Path) -> str:
    """A run's status for people (``research expand``): :func:`run_status`, with an unfinished run
    told apart as ``training`` (a process holds its lock now) or by how its last life ended
    (``stopped`` by SIGTERM/Ctrl-C, ``cancelled`` by scancel, ``interrupted``)."""
    if holder(run_dir) is not None:
        return "training"
    status = run_status(run_dir)
    summary = read_summary(run_dir)
    if status == RUNNING and summary is not None and summary.get("status") in (STOPPED, CANCELLED, INTERRUPTED):
        return str(summary["status"])
    return status


def config_record(run: Run) -> dict[str, Any]:
    """The run's config as ``config.yaml`` keeps it (without the provenance ``train`` adds); whether it
    is its ablation's baseline lets ``research report`` read an ablation from its run dirs alone."""
    record = dataclasses.asdict(run.cfg)
    record.pop("ablation")
    return {**record, "run_name": run.name, "is_baseline": run.is_baseline}


def resolved_config(run: Run) -> dict[str, Any]:
    """The run's config as a life saves it in ``config.yaml`` and sends it to W&B: :func:`config_record`
    with what ran it (:mod:`research.launch.provenance`: the code's git commit, package versions)."""
    return {**config_record(run), "git": provenance.git_info(), "versions": provenance.versions()}


def check(run: Run, *, force: bool = False, launching: bool = True) -> Verdict:
    """The verdict on ``run`` against its run dir; raises :class:`RunDirMismatch` if they disagree.

    ``launching``: a launcher asks (``train.resume: false`` then replaces the run, as ``--force`` does).
    The training process itself passes False: a job whose launcher already decided, or a requeued
    life, continues in its run dir (``train.resume: false`` then only means its checkpoint is not read).
    """
    if not holds_run(run.run_dir):
        return Verdict(run, NEW)
    if force or (launching and not run.cfg.train.resume):
        return Verdict(run, REPLACE)
    saved = read_config(run.run_dir)
    if saved is None:
        raise RunDirMismatch(
            f"{run.run_dir}: holds a run but no readable {CONFIG}, so what trained it is unknown; "
            f"pass --force to start this run over (the old dir is kept aside)"
        )
    old, new = flatten(with_builder_defaults(saved)), flatten(with_builder_defaults(config_record(run)))
    changes = training_changes(old, new, sections=tuple(SECTIONS))
    extended = None
    for key in EXTENSIBLE:
        if key in changes and isinstance(changes[key][0], int) and changes[key][1] > changes[key][0]:
            extended = changes.pop(key)
    if changes:
        raise RunDirMismatch(mismatch_message(run, changes))
    status = run_status(run.run_dir)
    action = DONE_ACTION if status == DONE and extended is None else RESUME
    return Verdict(run, action, execution_changes(old, new), extended)


def mismatch_message(run: Run, changes: dict[str, tuple[Any, Any]]) -> str:
    listed = ", ".join(f"{key} {format_value(old)} -> {format_value(new)}" for key, (old, new) in changes.items())
    return (
        f"{run.name}: {run.run_dir} was trained with another config ({listed}); pass --force to replace that run "
        f"(its dir is kept aside), or give this one another name=, variant or output_dir="
    )


def with_builder_defaults(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with each component section's unset builder parameters at their defaults: a section
    holds only the keys its files set, and ``drop_path_rate=0.3`` against an unset one is a change."""
    filled = dict(record)
    for key, spec in SECTIONS.items():
        section = record.get(key)
        if not isinstance(section, dict) or section.get("name") not in spec.registry.names():
            continue
        defaults = {
            name: param.default
            for name, param in spec.registry.signature(section["name"]).parameters.items()
            if param.default is not inspect.Parameter.empty and name not in spec.injected
        }
        filled[key] = {**defaults, **section}
    return filled


def with_prerequisites(runs: Iterable[Run]) -> list[Run]:
    """``runs`` with the runs they depend on placed before them, each run once (by run dir)."""
    ordered: dict[Path, Run] = {}

    def visit(run: Run) -> None:
        for needed in run.prerequisites():
            visit(needed)
        ordered.setdefault(run.run_dir, run)

    for run in runs:
        visit(run)
    return list(ordered.values())


def plan(runs: Sequence[Run], *, force: bool = False) -> list[Verdict]:
    """The verdicts on ``runs`` and on the runs they still need (a teacher, a fine-tuning source),
    prerequisites first. A finished run needs nothing: its teacher is neither checked nor trained.
    ``force`` replaces the requested runs, never their prerequisites. Raises before anything starts
    when any of them disagrees with its run dir, naming them all."""
    requested = {run.run_dir for run in runs}
    problems: list[str] = []
    verdicts: dict[Path, Verdict] = {}

    def judge(run: Run, forced: bool) -> None:
        try:
            verdicts[run.run_dir] = check(run, force=forced)
        except RunDirMismatch as exc:
            problems.append(str(exc))

    for run in runs:
        judge(run, force)
    unfinished = [run for run in runs if run.run_dir not in verdicts or verdicts[run.run_dir].action != DONE_ACTION]
    for run in with_prerequisites(unfinished):
        if run.run_dir not in requested:
            judge(run, False)
    if problems:
        raise RunDirMismatch("; ".join(problems))
    return [verdicts[run.run_dir] for run in with_prerequisites(runs) if run.run_dir in verdicts]


def prepare(verdicts: Sequence[Verdict]) -> list[Path]:
    """Move aside the run dirs of ``replace`` verdicts; returns where they went."""
    return [set_aside(v.run.run_dir) for v in verdicts if v.action == REPLACE and Path(v.run.run_dir).exists()]


def check_replaceable(verdicts: Sequence[Verdict]) -> None:
    """Raise :class:`RunDirBusy` when a run dir to replace is being trained, before anything moves."""
    for verdict in verdicts:
        if verdict.action == REPLACE:
            _check_not_busy(verdict.run.run_dir)


def _check_not_busy(run_dir: Path, fix: str = "stop it before replacing the run") -> None:
    busy = holder(run_dir)
    if busy is not None:
        raise RunDirBusy(f"{run_dir}: another process trains this run ({describe(busy)}); {fix}")


def check_not_busy(verdicts: Sequence[Verdict]) -> None:
    """Raise :class:`RunDirBusy` when a run dir to train is being trained, before anything starts (rank 0
    of each run then holds its lock: :func:`run_dir_lock`)."""
    for verdict in verdicts:
        if verdict.action == REPLACE:
            _check_not_busy(verdict.run.run_dir)
        elif verdict.action != DONE_ACTION:
            _check_not_busy(verdict.run.run_dir, _BUSY_FIX)


def set_aside(run_dir: Path) -> Path:
    """Move a run dir out of the way: nothing is deleted. Refused while a process trains it."""
    _check_not_busy(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
    number = 1
    while target.exists():
        number += 1
        target = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}-{number}")
    os.replace(run_dir, target)
    (target / LOCK).unlink(missing_ok=True)
    return target


def put_back(aside: Path, run_dir: Path) -> None:
    """Undo :func:`set_aside` (the replacement did not happen), unless something took ``run_dir`` since."""
    if not run_dir.exists():
        os.replace(aside, run_dir)


_BUSY_FIX = "wait for it to end, stop it, or give this run another name, variant or output_dir"


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, *, job_id: str | None = None) -> Iterator[None]:
    """Hold ``run_dir``'s lock inside the block; raise :class:`RunDirBusy` if another process holds it.

    :func:`research.files.flock` on ``<run dir>/.lock``, which names its holder (pid, host, SLURM job)
    for the error a second writer gets; a lock a dead holder left (``kill -9``, a lost node) is taken
    over, and logged."""
    run_dir = Path(run_dir).resolve()
    file = run_dir / LOCK
    with contextlib.ExitStack() as stack:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(flock(file, wait=False))
        except BlockingIOError:
            raise RunDirBusy(f"{run_dir}: another process trains this run ({describe(_read(file))}); {_BUSY_FIX}") from None
        except OSError as exc:
            if not isinstance(exc, PermissionError) and exc.errno != errno.EROFS:
                raise
            raise RunDirNotWritable(
                f"{run_dir}: cannot write the run dir ({exc.strerror}); make it writable (chmod u+w on it and its "
                "files), or set output_dir to a folder you can write"
            ) from None
        previous = _read(file)
        if previous:  # a holder that ended without releasing: killed (kill -9, node failure)
            log.warning("%s: took over the lock left by %s, which is no longer running", run_dir, describe(previous))
        with writing(file):  # a full disk: one line naming the file
            _write(handle, {"pid": os.getpid(), "host": socket.gethostname(), "job_id": job_id, "since": round(time.time(), 3)})
        try:
            yield
        finally:
            _write(handle, None)  # released cleanly: the next holder has nothing to take over (truncating needs no space)


def holder(run_dir: Path) -> dict[str, Any] | None:
    """Who holds ``run_dir``'s lock now, or None when nobody does."""
    file = Path(run_dir) / LOCK
    if not file.exists():
        return None
    try:
        with flock(file, wait=False, shared=True):
            return None
    except BlockingIOError:
        return _read(file) or {}


def describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "holder unknown"
    job = f", SLURM job {record['job_id']}" if record.get("job_id") else ""
    return f"pid {record.get('pid')} on {record.get('host')}{job}"


def _read(file: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(file.read_text() or "null")
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _write(handle: IO[str], record: dict[str, Any] | None) -> None:
    # Unbuffered: a write that fails (a full disk) must not fail again when the handle is closed.
    fd = handle.fileno()
    os.ftruncate(fd, 0)
    if record is not None:
        os.write(fd, json.dumps(record).encode())  # the file is opened for appending: at offset 0 once truncated


def teacher_note(run: Run) -> dict[str, str]:
    """This life's ``{"teacher_sha256": ...}`` for ``lives.jsonl`` (empty when the run uses no teacher).

    A teacher retrained in place (``--force`` on its experiment, a new file copied over the old) keeps
    its path: a half-trained student would go on silently against another teacher. The same weights
    trained again (a deterministic retrain) are the same teacher.

    Raises:
        TeacherChanged: The run resumes from a checkpoint, and its teacher's file is not the one
            the last life that recorded it trained with.
    """
    cfg = run.cfg
    if cfg.teacher is None or not LOSSES.info(cfg.loss["name"]).needs_teacher:
        return {}
    path = cfg.teacher["checkpoint"]
    digest = teacher_digest(path)
    recorded = next((life[TEACHER_KEY] for life in reversed(read_lives(run.run_dir)) if TEACHER_KEY in life), None)
    resumes = cfg.train.resume and any((run.run_dir / name).exists() for name in (LAST, PREVIOUS))
    if resumes and recorded is not None and recorded != digest:
        raise TeacherChanged(
            f"{run.run_dir}: teacher.checkpoint {path} holds other weights than this run trained with (SHA-256 "
            f"{recorded[:12]}... then, {digest[:12]}... now): restore that teacher checkpoint to resume, "
            "or train again with --force to start over with the new teacher"
        )
    return {TEACHER_KEY: digest}
