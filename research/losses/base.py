"""What every training objective shares: its result type, the split of a distilled model's output,
and the base (ground-truth) criterion.

An objective is an ``nn.Module`` called as ``objective(images, outputs, targets) -> LossOutput``, the
contract the training loop types as ``research.engine.fit.Objective`` (the engine imports no loss; a test
holds every ``LOSSES`` entry to it):

* ``images``: the batch the student saw, after mixup/cutmix, ``(B, 3, H, W)``;
* ``outputs``: the student's output, ``(B, C)`` logits, or ``(class_logits, dist_logits)`` for a
  distilled model in train mode;
* ``targets``: class indices ``(B,)``, or soft targets ``(B, C)`` when mixup/cutmix is on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

__all__ = ["LossOutput", "StudentOutput", "build_base_criterion", "split_outputs"]

#: A student's output: ``(B, C)`` logits, or ``(class_logits, dist_logits)`` from a distilled model.
StudentOutput = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LossOutput:
    """An objective's result.

    Attributes:
        loss: The scalar to backpropagate.
        logs: Detached scalar tensors to log, keyed ``"loss/<part>"``. They stay tensors so that the
            training step never forces a device sync (no ``.item()``); the logger converts them.
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


def split_outputs(outputs: StudentOutput) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(class_logits, dist_logits)``; ``dist_logits`` is None for a single-head output."""
    if isinstance(outputs, torch.Tensor):
        return outputs, None
    if isinstance(outputs, (tuple, list)) and len(outputs) == 2:
        class_logits, dist_logits = outputs
        return class_logits, dist_logits
    kind = type(outputs).__name__
    size = f" of length {len(outputs)}" if isinstance(outputs, (tuple, list)) else ""
    raise TypeError(
        f"expected the model to return a Tensor of logits or a (class_logits, dist_logits) pair, "
        f"got a {kind}{size}"
    )


def build_base_criterion(*, mixup_active: bool, label_smoothing: float) -> nn.Module:
    """The ground-truth criterion applied to the class head, chosen as DeiT's ``main.py`` does.

    Args:
        mixup_active: Whether mixup or cutmix produce soft targets. timm's ``Mixup`` already folds
            label smoothing into those targets, so the criterion is then a plain soft-target CE.
        label_smoothing: Smoothing for hard targets, in [0, 1) (``train.label_smoothing`` declares the
            bound); 0 disables it. Ignored when ``mixup_active``.

    Returns:
        ``SoftTargetCrossEntropy`` with mixup/cutmix, else ``LabelSmoothingCrossEntropy`` when
        ``label_smoothing > 0``, else ``nn.CrossEntropyLoss``.
    """
    if mixup_active:
        return SoftTargetCrossEntropy()
    if label_smoothing > 0.0:
        return LabelSmoothingCrossEntropy(smoothing=label_smoothing)
    return nn.CrossEntropyLoss()
