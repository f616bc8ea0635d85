"""A student resumes under the teacher it trained with, or not at all.

A teacher's path says nothing about its weights: a teacher retrained in place (``--force`` on its
experiment, a new file copied over the old) keeps its path, and a half-trained student would go on
silently against another teacher. Each life of a distilling run records the SHA-256 of its teacher's
weights in ``lives.jsonl`` (read once per life, on the main process); a resume under other weights
is refused before anything is written. The same weights trained again (a deterministic retrain of a
teacher whose ``last.pt`` was deleted) are the same teacher.
"""

from __future__ import annotations

from research.config import ConfigError, Run
from research.engine import checkpoint
from research.engine.run_dir import read_lives
from research.registry import LOSSES
from research.teachers.checkpoint import teacher_digest

KEY = "teacher_sha256"  # the field of a life's line in lives.jsonl


class TeacherChanged(ConfigError):
    """The teacher checkpoint is not the one the run trained with so far (exit 2)."""


def teacher_note(run: Run) -> dict[str, str]:
    """This life's ``{"teacher_sha256": ...}`` for ``lives.jsonl`` (empty when the run uses no teacher).

    Raises:
        TeacherChanged: The run resumes from a checkpoint, and its teacher's file is not the one
            the last life that recorded it trained with.
    """
    cfg = run.cfg
    if cfg.teacher is None or not LOSSES.info(cfg.loss["name"]).needs_teacher:
        return {}
    path = cfg.teacher["checkpoint"]
    digest = teacher_digest(path)
    recorded = next((life[KEY] for life in reversed(read_lives(run.run_dir)) if KEY in life), None)
    resumes = cfg.train.resume and any((run.run_dir / name).exists() for name in (checkpoint.LAST, checkpoint.PREVIOUS))
    if resumes and recorded is not None and recorded != digest:
        raise TeacherChanged(
            f"{run.run_dir}: teacher.checkpoint {path} holds other weights than this run trained with (SHA-256 "
            f"{recorded[:12]}... then, {digest[:12]}... now): restore that teacher checkpoint to resume, "
            "or train again with --force to start over with the new teacher"
        )
    return {KEY: digest}
