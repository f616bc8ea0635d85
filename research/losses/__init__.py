"""Training objectives (``LOSSES``): ``objective(images, outputs, targets) -> LossOutput``.

Registered: ``none`` (ground truth only), ``soft``, ``soft_paper`` and ``hard`` (DeiT distillation).
Builders take ``base_criterion`` and ``teacher`` from the engine and ``alpha``/``tau``/``kl_reduction``
from the experiment; their :class:`LossInfo` (``needs_teacher``) tells the loader and the launcher whether
a teacher is built, and a check in :mod:`research.losses.distillation` refuses a distilling loss without one.
"""

from research.losses import distillation  # noqa: F401  (registers the objectives)
from research.losses.base import LossOutput, StudentOutput, build_base_criterion, split_outputs
from research.losses.distillation import (
    DistillationObjective,
    GroundTruthObjective,
    HardDistillation,
    SoftDistillation,
)

__all__ = [
    "DistillationObjective",
    "GroundTruthObjective",
    "HardDistillation",
    "LossOutput",
    "SoftDistillation",
    "StudentOutput",
    "build_base_criterion",
    "split_outputs",
]
