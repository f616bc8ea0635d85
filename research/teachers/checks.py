"""What a teacher section must hold, checked when an experiment loads: a readable checkpoint, and a
stated resolution (a warning when it is not the student's)."""

from __future__ import annotations

import logging

from research.registry import TEACHERS, CheckContext, Invalid, model_img_size
from research.teachers.checkpoint import TeacherCheckpointError, check_teacher_checkpoint

log = logging.getLogger(__name__)


@TEACHERS.add_check
def teacher_checkpoint_and_resolution(context: CheckContext) -> None:
    teacher, student = context.config["teacher"], context.config["model"]
    if context.check_files and not teacher.get("from_experiment"):  # a linked run's checkpoint comes later
        try:
            check_teacher_checkpoint(teacher["checkpoint"])
        except TeacherCheckpointError as exc:
            raise Invalid("teacher.checkpoint", f"teacher.checkpoint: {exc}") from None
    size = teacher_img_size(teacher)
    if size is None:
        raise Invalid(
            "teacher.img_size",
            f"teacher {context.name!r}: say the resolution its checkpoint was trained at with teacher.img_size",
        )
    student_size = model_img_size(student)
    if student_size is not None and size != student_size:
        log.warning(
            "the teacher (%s, trained at %dx%d) sees the student's %dx%d images; the paper fine-tunes at 384 with a "
            "teacher adapted to 384 (FixRes): give such a checkpoint and teacher.img_size=%d",
            context.name, size, size, student_size, student_size, student_size,
        )  # fmt: skip


def teacher_img_size(section: dict) -> int | None:
    """The resolution a teacher section's checkpoint was trained at: ``img_size``, else the entry's."""
    return section.get("img_size") or TEACHERS.info(section["name"]).img_size
