"""Every registered loss keeps the objective contract, as every model and teacher takes a training step
(tests/test_registry_steps.py): parametrised over ``LOSSES``, and over a plugin loss registered here,
so a new loss is covered without a test of its own.

The contract (research/losses/base.py): ``objective(images, outputs, targets) -> LossOutput``, a scalar
loss with detached ``loss/<part>`` logs; a loss whose ``LossInfo.needs_teacher`` is set is built with a
teacher (and refused without one), calls it without autograd on the student's images, and trains the
distillation head; one that does not trains the class head only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from research.losses import DistillationObjective, LossOutput, build_base_criterion
from research.registry import LOSSES, LossInfo

B, C = 4, 5
PLUGIN = "plugin_cosine"


class CosineDistillation(DistillationObjective):
    """A plugin's loss: one minus the cosine similarity of the student's and the teacher's logits."""

    def distillation_loss(self, dist_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return (1 - F.cosine_similarity(dist_logits, teacher_logits, dim=-1)).mean()


@pytest.fixture(params=[*LOSSES.names(), PLUGIN])
def loss(request: pytest.FixtureRequest, restore_registries: None) -> Iterator[str]:
    if request.param == PLUGIN:

        @LOSSES.register(PLUGIN, LossInfo(needs_teacher=True))
        def cosine(*, base_criterion: nn.Module, teacher: nn.Module | None, alpha: float = 0.5) -> CosineDistillation:
            if teacher is None:
                raise ValueError(f"loss {PLUGIN!r} distils from a teacher: add a 'teacher:' section")
            return CosineDistillation(base_criterion=base_criterion, teacher=teacher, alpha=alpha)

    yield request.param


class RecordingTeacher(nn.Module):
    """Random fixed logits; records the images it saw and whether autograd was on."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("logits", torch.randn(B, C, generator=torch.Generator().manual_seed(1)))
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append((images, torch.is_grad_enabled()))
        return self.logits.clone()


def heads() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, C, generator=generator, requires_grad=True) for _ in range(2))  # type: ignore[return-value]


def build(name: str, *, mixup: bool = False) -> tuple[nn.Module, RecordingTeacher | None]:
    teacher = RecordingTeacher() if LOSSES.info(name).needs_teacher else None
    criterion = build_base_criterion(mixup_active=mixup, label_smoothing=0.1)
    return LOSSES.build(name, base_criterion=criterion, teacher=teacher), teacher


@pytest.mark.parametrize("mixup", [False, True], ids=["labels", "mixed-targets"])
def test_every_loss_returns_a_scalar_and_detached_logs(loss: str, mixup: bool) -> None:
    objective, _ = build(loss, mixup=mixup)
    images = torch.randn(B, 3, 8, 8)
    targets = torch.softmax(torch.randn(B, C), dim=-1) if mixup else torch.arange(B) % C
    out = objective(images, heads(), targets)
    assert isinstance(out, LossOutput)
    assert out.loss.shape == () and out.loss.requires_grad and torch.isfinite(out.loss)
    assert "loss/base" in out.logs and all(key.startswith("loss/") for key in out.logs)
    assert all(isinstance(v, torch.Tensor) and v.shape == () and not v.requires_grad for v in out.logs.values())


def test_every_loss_trains_the_heads_its_info_says(loss: str) -> None:
    """A distilling loss trains the distillation head; any other leaves it without a gradient (DDP then
    expects an unused head, research.launch reads ``needs_teacher`` for that)."""
    objective, teacher = build(loss)
    class_logits, dist_logits = heads()
    images = torch.randn(B, 3, 8, 8)
    objective(images, (class_logits, dist_logits), torch.arange(B) % C).loss.backward()
    assert class_logits.grad is not None and class_logits.grad.abs().sum() > 0
    assert (dist_logits.grad is not None) == LOSSES.info(loss).needs_teacher
    if teacher is not None:  # called once, on the student's images, without autograd
        assert len(teacher.calls) == 1 and teacher.calls[0][0] is images and teacher.calls[0][1] is False


def test_a_distilling_loss_needs_a_teacher_and_a_distilled_student_and_no_other_does(loss: str) -> None:
    class_logits, _ = heads()
    images, labels = torch.randn(B, 3, 8, 8), torch.arange(B) % C
    if LOSSES.info(loss).needs_teacher:
        with pytest.raises(ValueError, match="teacher"):
            LOSSES.build(loss, base_criterion=nn.CrossEntropyLoss(), teacher=None)
        with pytest.raises(ValueError, match="distilled student"):
            build(loss)[0](images, class_logits, labels)
    else:  # a plain model's logits, no teacher
        out = LOSSES.build(loss, base_criterion=nn.CrossEntropyLoss(), teacher=None)(images, class_logits, labels)
        assert torch.isfinite(out.loss)
