"""Frozen teachers for distillation (``TEACHERS``), and reading their checkpoints.

Builders take the dataset's ``num_classes`` (injected) plus ``checkpoint`` and ``channels_last``
from the experiment; ``timm`` also takes ``arch``. ``teacher.img_size`` states the resolution the
checkpoint was trained at (default: the entry's :class:`TeacherInfo`). The check in
:mod:`research.teachers.checks` runs at load time, so a missing file fails before the job queues.
"""

from research.teachers import checks, cnn  # noqa: F401  (registers the builders and the check)
from research.teachers.checkpoint import (
    TeacherCheckpointError,
    check_teacher_checkpoint,
    load_teacher_weights,
    read_state_dict,
)
from research.teachers.cnn import Teacher, teacher_network

__all__ = [
    "Teacher",
    "TeacherCheckpointError",
    "check_teacher_checkpoint",
    "load_teacher_weights",
    "read_state_dict",
    "teacher_network",
]
