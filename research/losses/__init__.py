"""Training objectives (``LOSSES``): ``objective(images, outputs, targets) -> LossOutput``.

Registered: ``none`` (ground truth only), ``soft``, ``soft_paper`` and ``hard`` (DeiT distillation).
Builders take ``base_criterion`` and ``teacher`` from the engine and ``alpha``/``tau``/``kl_reduction``
from the experiment; metadata ``needs_teacher`` tells the config loader whether a teacher is required.
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
