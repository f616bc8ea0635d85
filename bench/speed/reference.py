"""The reference loop: one iteration of facebookresearch/deit's ``train_one_epoch`` (``engine.py``),
written from its description, not copied.

On a GPU the reference runs each step under ``torch.cuda.amp.autocast()`` (fp16), scales the loss
with its ``NativeScaler`` (a ``GradScaler``), reads ``loss.item()`` to check it is finite, and calls
``torch.cuda.synchronize()`` after the update. :func:`reference_step` does exactly that for
``ReferenceSettings.deit(device)``; with ``ReferenceSettings.equal_to(...)`` it runs at the engine's
precision (a scaler only for fp16), still reading the loss and synchronising every step, so the
two sides differ in how the step is driven, not in the arithmetic.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from research.engine.fit import Loop

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ReferenceSettings:
    """How the reference drives a step: its autocast precision, whether it scales the loss, and the
    device it synchronises."""

    precision: str
    scaled: bool
    device: torch.device

    @classmethod
    def deit(cls, device: torch.device) -> ReferenceSettings:
        """As deit's ``main.py`` runs: fp16 autocast and a GradScaler on a GPU; on a CPU both are
        no-ops there (``torch.cuda.amp``), so fp32 and plain ``backward()``."""
        if device.type == "cuda":
            return cls("fp16", True, device)
        return cls("fp32", False, device)

    @classmethod
    def equal_to(cls, precision: str, device: torch.device) -> ReferenceSettings:
        """The engine's precision (a GradScaler only where the engine has one: fp16)."""
        return cls(precision, precision == "fp16", device)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST[self.precision])

    def scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.scaled else None


class ReferenceLoss(nn.Module):
    """The reference ``DistillationLoss`` for ``--distillation-type none | hard``.

    ``teacher`` is the raw network in eval mode (no wrapper), called under ``torch.no_grad`` as the
    reference does.
    """

    def __init__(self, base_criterion: nn.Module, teacher: nn.Module | None, alpha: float = 0.5) -> None:
        super().__init__()
        self.base_criterion, self.teacher, self.alpha = base_criterion, teacher, alpha

    def forward(self, inputs: torch.Tensor, outputs: Any, labels: torch.Tensor) -> torch.Tensor:
        outputs_kd = None
        if not isinstance(outputs, torch.Tensor):
            outputs, outputs_kd = outputs  # (B, C) class head, (B, C) distillation head
        base_loss = self.base_criterion(outputs, labels)
        if self.teacher is None:
            return base_loss
        if outputs_kd is None:
            raise ValueError("hard distillation needs a distilled student returning (class_logits, dist_logits)")
        with torch.no_grad():
            teacher_outputs = self.teacher(inputs)  # (B, C)
        distillation_loss = F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
        return base_loss * (1 - self.alpha) + distillation_loss * self.alpha


def reference_step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    mixup_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
    samples: torch.Tensor,
    targets: torch.Tensor,
    settings: ReferenceSettings,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One iteration of the reference ``train_one_epoch``; returns the loss value.

    ``scaler`` is the run's ``GradScaler`` when ``settings.scaled`` (it keeps its scale across
    steps, as the reference's ``loss_scaler`` does). The learning rate moves per epoch, outside.
    """
    samples = samples.to(settings.device, non_blocking=True)
    targets = targets.to(settings.device, non_blocking=True)
    if mixup_fn is not None:
        samples, targets = mixup_fn(samples, targets)
    with settings.autocast():
        outputs = model(samples)
        loss = criterion(samples, outputs, targets)
    loss_value = loss.item()  # every step, as the reference logs it: a host sync
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"reference loop: loss is {loss_value}")
    optimizer.zero_grad()
    if scaler is not None:  # NativeScaler.__call__ without clipping
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    if settings.device.type == "cuda":
        torch.cuda.synchronize(settings.device)
    return loss_value


def reference_loss_for(loop: Loop) -> ReferenceLoss:
    """The reference criterion over the same base criterion and teacher network as ``loop``'s objective."""
    objective = loop.objective
    teacher = getattr(objective, "teacher", None)
    base_criterion = getattr(objective, "base_criterion")  # noqa: B009  (not part of the engine's Objective protocol)
    return ReferenceLoss(base_criterion, getattr(teacher, "net", teacher), getattr(objective, "alpha", 0.5))


def reference_stepper(
    loop: Loop, images: torch.Tensor, targets: torch.Tensor, settings: ReferenceSettings
) -> Callable[[], float]:
    """A step of the reference loop over ``loop``'s model, optimizer and mixup, on a fixed batch."""
    criterion, state, mix, scaler = reference_loss_for(loop), loop.state, loop.data.mix, settings.scaler()
    return lambda: reference_step(state.model, criterion, state.optimizer, mix, images, targets, settings, scaler)
