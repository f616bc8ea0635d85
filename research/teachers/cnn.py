"""Frozen CNN teachers (``TEACHERS``): timm ImageNet CNNs and this package's CIFAR CNNs.

The paper distils from a RegNetY-16GF trained on ImageNet (Touvron et al. 2021, Sec. 5.2) and
compares RegNetY teachers of several sizes in Table 2. Every builder takes the dataset's
``num_classes`` (injected by the engine) and a ``checkpoint`` path; weights load with
``strict=True`` (see :mod:`research.teachers.checkpoint`).

A teacher receives the student's (mixed, normalised) images unchanged, as in the reference code, so
it must have been trained with the same input normalisation as the student's data pipeline.
"""

from __future__ import annotations

import difflib

import timm
import torch
from torch import nn

from research.registry import MODELS, TEACHERS, TeacherInfo
from research.teachers.checkpoint import check_teacher_checkpoint, load_teacher_weights

__all__ = ["Teacher"]


class Teacher(nn.Module):
    """A frozen classifier whose logits are distillation targets.

    It stays in eval mode (BatchNorm running statistics, no dropout or drop-path) and has no
    gradients: ``.train()`` leaves it in eval mode, so an objective holding a teacher can be put in
    train mode with the student. It moves with ``.to(device)`` like any module.

    Args:
        net: The network, with weights already loaded.
        name: Registry name, shown in ``repr``.
        num_classes: Outputs of ``net``.
        channels_last: Run ``net`` in channels-last memory format (faster convs on recent GPUs).
    """

    def __init__(self, net: nn.Module, *, name: str, num_classes: int, channels_last: bool = False) -> None:
        super().__init__()
        self.net = net.requires_grad_(False)
        self.name = name
        self.num_classes = num_classes
        self.channels_last = False
        self.dtype: torch.dtype | None = None
        self.for_run(channels_last=channels_last)
        self.train(False)

    def for_run(self, *, channels_last: bool = False, dtype: torch.dtype | None = None) -> Teacher:
        """Run as the student does: channels-last memory format (kept if already on), and weights and
        inputs in the run's autocast ``dtype`` (bf16 / fp16), so no step casts the weights again."""
        if channels_last and not self.channels_last:
            self.channels_last = True
            self.net.to(memory_format=torch.channels_last)
        if dtype is not None:
            self.dtype = dtype
            self.net.to(dtype)
        return self

    def train(self, mode: bool = True) -> Teacher:
        """Keep eval mode whatever ``mode`` is: a teacher's BatchNorm statistics must not drift."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images to ``(B, num_classes)`` logits, without autograd history."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            logits = self.net(images if self.dtype is None else images.to(self.dtype))  # (B, C), an inference tensor
        # Inference tensors cannot be saved for backward, so e.g. mse_loss(student, teacher) would
        # fail; a copy made outside inference mode is an ordinary tensor. Only B x C floats, at least
        # float32 (a bf16 teacher's targets are not rounded again; a float64 one keeps its precision).
        return logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)

    def extra_repr(self) -> str:
        dtype = f", dtype={self.dtype}" if self.dtype is not None else ""
        return f"name={self.name!r}, num_classes={self.num_classes}, channels_last={self.channels_last}{dtype}"


def _timm_teacher(
    arch: str, *, num_classes: int, checkpoint: str, channels_last: bool, name: str | None = None
) -> Teacher:
    name = name or arch
    check_teacher_checkpoint(checkpoint)  # before building a net of up to 84M parameters
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    load_teacher_weights(net, checkpoint, teacher=name, num_classes=num_classes)
    return Teacher(net, name=name, num_classes=num_classes, channels_last=channels_last)


def _models_teacher(arch: str, *, num_classes: int, checkpoint: str, channels_last: bool) -> Teacher:
    check_teacher_checkpoint(checkpoint)
    net = MODELS.build(arch, num_classes=num_classes)
    load_teacher_weights(net, checkpoint, teacher=arch, num_classes=num_classes)
    return Teacher(net, name=arch, num_classes=num_classes, channels_last=channels_last)


@TEACHERS.register("regnety_160", TeacherInfo(arch="regnety_160", source="timm", img_size=224))
def regnety_160(*, num_classes: int, checkpoint: str, channels_last: bool = False) -> Teacher:
    """RegNetY-16GF (84M parameters), the paper's teacher (Sec. 5.2)."""
    return _timm_teacher("regnety_160", num_classes=num_classes, checkpoint=checkpoint, channels_last=channels_last)


@TEACHERS.register("regnety_080", TeacherInfo(arch="regnety_080", source="timm", img_size=224))
def regnety_080(*, num_classes: int, checkpoint: str, channels_last: bool = False) -> Teacher:
    """RegNetY-8GF (39M parameters), a smaller teacher of the paper's Table 2."""
    return _timm_teacher("regnety_080", num_classes=num_classes, checkpoint=checkpoint, channels_last=channels_last)


@TEACHERS.register("regnety_040", TeacherInfo(arch="regnety_040", source="timm", img_size=224))
def regnety_040(*, num_classes: int, checkpoint: str, channels_last: bool = False) -> Teacher:
    """RegNetY-4GF (21M parameters), the smallest teacher of the paper's Table 2."""
    return _timm_teacher("regnety_040", num_classes=num_classes, checkpoint=checkpoint, channels_last=channels_last)


@TEACHERS.register("resnet50", TeacherInfo(arch="resnet50", source="timm", img_size=224))
def resnet50(*, num_classes: int, checkpoint: str, channels_last: bool = False) -> Teacher:
    """ResNet-50 (timm ``resnet50``), a common, cheaper ImageNet teacher (not in the paper)."""
    return _timm_teacher("resnet50", num_classes=num_classes, checkpoint=checkpoint, channels_last=channels_last)


@TEACHERS.register("timm", TeacherInfo(source="timm"))
def timm_teacher(*, num_classes: int, checkpoint: str, arch: str, channels_last: bool = False) -> Teacher:
    """Any timm classifier by name, e.g. ``arch: convnext_tiny``; its weights come from ``checkpoint``.

    Args:
        num_classes: The dataset's class count (injected).
        checkpoint: Weights for ``arch`` with a ``num_classes``-way head.
        arch: A ``timm.list_models()`` name.
        channels_last: Run in channels-last memory format.
    """
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"teacher 'timm': unknown timm architecture arch={arch!r}.{hint} See timm.list_models()")
    return _timm_teacher(
        arch, num_classes=num_classes, checkpoint=checkpoint, channels_last=channels_last, name=f"timm:{arch}"
    )


@TEACHERS.register("resnet18_cifar", TeacherInfo(arch="resnet18_cifar", source="research", img_size=32))
def resnet18_cifar(*, num_classes: int, checkpoint: str, channels_last: bool = False) -> Teacher:
    """ResNet-18 with a CIFAR stem (MODELS ``resnet18_cifar``), trained by this package's engine."""
    return _models_teacher(
        "resnet18_cifar", num_classes=num_classes, checkpoint=checkpoint, channels_last=channels_last
    )


@TEACHERS.register("resnet10_cifar", TeacherInfo(arch="resnet10_cifar", source="research", img_size=32))
def resnet10_cifar(*, num_classes: int, checkpoint: str, channels_last: bool = False) -> Teacher:
    """Narrow ResNet-10 with a CIFAR stem (MODELS ``resnet10_cifar``), for fast tests and smoke runs."""
    return _models_teacher(
        "resnet10_cifar", num_classes=num_classes, checkpoint=checkpoint, channels_last=channels_last
    )


@TEACHERS.register("resnet9_cifar", TeacherInfo(arch="resnet9_cifar", source="research", img_size=32))
def resnet9_cifar(*, num_classes: int, checkpoint: str, channels_last: bool = False) -> Teacher:
    """Page's ResNet-9 for CIFAR (MODELS ``resnet9_cifar``), trained by this package's engine."""
    return _models_teacher("resnet9_cifar", num_classes=num_classes, checkpoint=checkpoint, channels_last=channels_last)


@TEACHERS.register("resnet9_slim_cifar", TeacherInfo(arch="resnet9_slim_cifar", source="research", img_size=32))
def resnet9_slim_cifar(*, num_classes: int, checkpoint: str, channels_last: bool = False) -> Teacher:
    """Half-width ResNet-9 (MODELS ``resnet9_slim_cifar``): the fast CIFAR teacher."""
    return _models_teacher(
        "resnet9_slim_cifar", num_classes=num_classes, checkpoint=checkpoint, channels_last=channels_last
    )


@TEACHERS.register("airbench_cifar", TeacherInfo(arch="airbench_cifar", source="research", img_size=32))
def airbench_cifar(*, num_classes: int, checkpoint: str, channels_last: bool = False) -> Teacher:
    """Jordan's airbench94 network (MODELS ``airbench_cifar``), trained by this package's engine."""
    return _models_teacher("airbench_cifar", num_classes=num_classes, checkpoint=checkpoint, channels_last=channels_last)
