"""DeiT's objectives (Touvron et al. 2021, Sec. 4): ground truth alone, or ground truth plus soft or
hard distillation from a frozen teacher, with the semantics of the reference ``DistillationLoss``
(facebookresearch/deit, ``losses.py``).

For a distilled student ``(class_logits, dist_logits)`` the ground-truth criterion trains the class
head and the distillation term trains the distillation head; the two are mixed as
``(1 - alpha) * base + alpha * distill``. The teacher sees the same (mixed) images as the student.
"""

from __future__ import annotations

import abc
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from research.losses.base import LossOutput, StudentOutput, split_outputs
from research.registry import LOSSES, MODELS, CheckContext, Invalid, LossInfo, Range

__all__ = ["DistillationObjective", "GroundTruthObjective", "HardDistillation", "SoftDistillation"]

KlReduction = Literal["numel", "batchmean"]


class GroundTruthObjective(nn.Module):
    """The base criterion on the class head; no teacher.

    A distilled student's ``dist_logits`` are ignored, as in the reference code with
    ``--distillation-type none``: the distillation token and head then get no gradient, so DDP
    needs ``find_unused_parameters=True`` for that combination.
    """

    def __init__(self, *, base_criterion: nn.Module) -> None:
        super().__init__()
        self.base_criterion = base_criterion

    def forward(self, images: torch.Tensor, outputs: StudentOutput, targets: torch.Tensor) -> LossOutput:
        class_logits, _ = split_outputs(outputs)
        base = self.base_criterion(class_logits, targets)
        return LossOutput(base, {"loss/base": base.detach()})


class DistillationObjective(nn.Module, abc.ABC):
    """``(1 - alpha) * base(class_logits, targets) + alpha * distill(dist_logits, teacher(images))``.

    Subclasses define :meth:`distillation_loss`. The teacher is a submodule so that ``.to(device)``
    on the objective moves it with the student; it should be frozen (``research.teachers.Teacher``),
    and it is called under ``torch.no_grad`` in any case.
    """

    def __init__(self, *, base_criterion: nn.Module, teacher: nn.Module, alpha: float) -> None:
        super().__init__()
        self.base_criterion = base_criterion
        self.teacher = teacher
        self.alpha = alpha

    @abc.abstractmethod
    def distillation_loss(self, dist_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Scalar loss of the student's ``(B, C)`` distillation logits against the teacher's."""

    def forward(self, images: torch.Tensor, outputs: StudentOutput, targets: torch.Tensor) -> LossOutput:
        class_logits, dist_logits = split_outputs(outputs)
        if dist_logits is None:
            raise ValueError(
                f"{type(self).__name__} needs a distilled student returning (class_logits, dist_logits) in "
                "train mode, but the model returned a single Tensor; use a *_distilled_* model or loss 'none'"
            )
        base = self.base_criterion(class_logits, targets)
        with torch.no_grad():  # the teacher only provides targets
            teacher_logits = self.teacher(images)  # (B, C)
        if teacher_logits.shape != dist_logits.shape:
            raise ValueError(
                f"teacher logits {tuple(teacher_logits.shape)} do not match the student's distillation logits "
                f"{tuple(dist_logits.shape)}; teacher and student must predict the same classes"
            )
        distill = self.distillation_loss(dist_logits, teacher_logits)
        loss = (1.0 - self.alpha) * base + self.alpha * distill
        return LossOutput(loss, {"loss/base": base.detach(), "loss/distill": distill.detach()})


class SoftDistillation(DistillationObjective):
    """``tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))`` (paper Sec. 4, "soft distillation").

    Args:
        tau: Softmax temperature; ``tau^2`` keeps the gradient scale independent of it (Hinton et al. 2015).
        kl_reduction: ``"numel"`` divides the summed KL by ``B * C``, as the reference code does:
            its authors trained with the legacy PyTorch ``kl_div`` mean and kept that normalisation for
            the release so results reproduce (facebookresearch/deit#61; ``batchmean`` gave similar or
            slightly lower accuracy). ``"batchmean"`` divides by ``B`` only, the KL's mathematical
            definition used by timm and most KD code; it is ``C`` times larger, so the same ``alpha``
            means a much stronger distillation term.
    """

    def __init__(
        self, *, base_criterion: nn.Module, teacher: nn.Module, alpha: float, tau: float, kl_reduction: KlReduction
    ) -> None:
        super().__init__(base_criterion=base_criterion, teacher=teacher, alpha=alpha)
        self.tau = tau
        self.kl_reduction = kl_reduction

    def distillation_loss(self, dist_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        # Both sides as log-probabilities (log_target=True), which is numerically safer than
        # probabilities for a peaked teacher; the reference code does the same.
        log_p_student = F.log_softmax(dist_logits / self.tau, dim=-1)  # (B, C)
        log_p_teacher = F.log_softmax(teacher_logits / self.tau, dim=-1)  # (B, C)
        kl_sum = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
        n = dist_logits.numel() if self.kl_reduction == "numel" else dist_logits.shape[0]
        return kl_sum * (self.tau * self.tau) / n


class HardDistillation(DistillationObjective):
    """Cross-entropy against the teacher's hard decision ``argmax_c Z_t(c)`` (paper Sec. 4, "hard-label")."""

    def distillation_loss(self, dist_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(dist_logits, teacher_logits.argmax(dim=-1))


def _require_teacher(name: str, teacher: nn.Module | None) -> nn.Module:
    if teacher is None:
        raise ValueError(
            f"loss {name!r} distils from a teacher, but none was given; add a 'teacher:' section "
            "(e.g. name: regnety_160 with a checkpoint path) or use loss 'none'"
        )
    return teacher


# The builders' parameter types, their one home: the config loader checks ``loss.*`` values against them at
# load time, and ``LOSSES.build`` the arguments it is given (the objectives' constructors trust them).
Alpha = Annotated[float, Range(ge=0, le=1, hint="the weight of the distillation term")]
Tau = Annotated[float, Range(gt=0, hint="the softmax temperature")]


@LOSSES.register("none", LossInfo(needs_teacher=False))
def no_distillation(*, base_criterion: nn.Module, teacher: nn.Module | None) -> GroundTruthObjective:
    """Ground truth only. A distilled student is trained through its class head only (see
    :class:`GroundTruthObjective`). It takes no ``alpha``/``tau``: a key that would do nothing is refused."""
    if teacher is not None:
        raise ValueError("loss 'none' does not use a teacher; remove the 'teacher:' section or use loss 'soft'/'hard'")
    return GroundTruthObjective(base_criterion=base_criterion)


@LOSSES.register("soft", LossInfo(needs_teacher=True))
def soft(
    *,
    base_criterion: nn.Module,
    teacher: nn.Module | None,
    alpha: Alpha = 0.5,
    tau: Tau = 1.0,
    kl_reduction: KlReduction = "numel",
) -> SoftDistillation:
    """Soft distillation with the reference code's defaults (``--distillation-alpha 0.5 --distillation-tau 1.0``)."""
    teacher = _require_teacher("soft", teacher)
    return SoftDistillation(base_criterion=base_criterion, teacher=teacher, alpha=alpha, tau=tau, kl_reduction=kl_reduction)


@LOSSES.register("soft_paper", LossInfo(needs_teacher=True))
def soft_paper(
    *,
    base_criterion: nn.Module,
    teacher: nn.Module | None,
    alpha: Alpha = 0.1,
    tau: Tau = 3.0,
    kl_reduction: KlReduction = "numel",
) -> SoftDistillation:
    """Soft distillation with the paper's setting, tau = 3.0 and lambda (our alpha) = 0.1 (Sec. 5.2)."""
    return soft(base_criterion=base_criterion, teacher=teacher, alpha=alpha, tau=tau, kl_reduction=kl_reduction)


@LOSSES.register("hard", LossInfo(needs_teacher=True))
def hard(*, base_criterion: nn.Module, teacher: nn.Module | None, alpha: Alpha = 0.5) -> HardDistillation:
    """Hard-label distillation, the paper's default (Sec. 4); equal weights as in the paper. It has no
    temperature: ``tau`` and ``kl_reduction`` are refused, not ignored."""
    return HardDistillation(base_criterion=base_criterion, teacher=_require_teacher("hard", teacher), alpha=alpha)


@LOSSES.add_check
def distillation_needs_a_token_and_a_teacher(context: CheckContext) -> None:
    """A distilling loss needs a student with a distillation token, and a ``teacher:`` section."""
    if not LOSSES.info(context.name).needs_teacher:
        return
    model = context.config["model"]["name"]
    if not MODELS.info(model).distilled:
        distilled = [name for name in MODELS.names() if MODELS.info(name).distilled]
        raise Invalid(
            "loss.name",
            f"loss {context.name!r} needs a model with a distillation token, and {model!r} has none; "
            f"use one of: {', '.join(distilled)}",
        )
    if context.config.get("teacher") is None:
        raise Invalid("loss.name", f"loss {context.name!r} needs a teacher: section")
