"""A run dir is its config: every relaunch, resume and skip is checked against the run dir's ``config.yaml``.

:func:`check` compares a run's resolved config with the one its run dir was trained with. A key that
changes training (:mod:`research.config.keys`) and differs makes the run a :class:`RunDirMismatch`:
the command stops before anything starts, naming each key with both values, and offers the two ways
on (``--force`` to replace the run, keeping the old dir aside; or another name, variant or output dir).
Keys that only say where and how the run executes may change; the life that changes them records
the change in ``lives.jsonl``. ``train.epochs`` may grow: a finished run then resumes and trains on.

``--force`` (and ``train.resume: false``) always start clean: the old run dir, whatever it holds, is
moved aside (:func:`set_aside`), never deleted.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from research.config import ConfigError, Run
from research.config.components import SECTIONS
from research.config.expand import format_value
from research.config.keys import EXTENSIBLE, execution_changes, training_changes
from research.config.sources import flatten
from research.engine.run_dir import CONFIG, DONE, LIVES, METRICS, RUNNING, SUMMARY, read_summary, run_status
from research.launch.lock import LOCK_FILE, RunDirBusy, describe, holder

NEW, RESUME, DONE_ACTION, REPLACE = "new", "resume", "done", "replace"
_RUN_FILES = (CONFIG, "last.pt", SUMMARY, METRICS, LIVES)  # a run dir holding any of them holds a run


class RunDirMismatch(ConfigError):
    """The run dir was trained with another config (bad input: one line, exit 2)."""


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
    if status == RUNNING and summary is not None and summary.get("status") in ("stopped", "cancelled", "interrupted"):
        return str(summary["status"])
    return status


def config_record(run: Run) -> dict[str, Any]:
    """The run's config as ``config.yaml`` keeps it (without the provenance ``train`` adds); whether it
    is its ablation's baseline lets ``research report`` read an ablation from its run dirs alone."""
    record = dataclasses.asdict(run.cfg)
    record.pop("ablation")
    return {**record, "run_name": run.name, "is_baseline": run.is_baseline}


def holds_run(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in _RUN_FILES)


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
    saved = saved_config(run.run_dir)
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


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    file = Path(run_dir) / CONFIG
    try:
        saved = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return saved if isinstance(saved, dict) else None


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


def _check_not_busy(run_dir: Path) -> None:
    busy = holder(run_dir)
    if busy is not None:
        raise RunDirBusy(f"{run_dir}: another process trains this run ({describe(busy)}); stop it before replacing the run")


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
    (target / LOCK_FILE).unlink(missing_ok=True)
    return target


def put_back(aside: Path, run_dir: Path) -> None:
    """Undo :func:`set_aside` (the replacement did not happen), unless something took ``run_dir`` since."""
    if not run_dir.exists():
        os.replace(aside, run_dir)
