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
from collections.abc import Callable

import timm
import torch
from torch import nn

from research.registry import MODELS, TEACHERS, TeacherInfo
from research.teachers.checkpoint import check_teacher_checkpoint, load_teacher_weights

__all__ = ["Teacher", "teacher_network"]


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


def teacher_network(name: str, *, num_classes: int, arch: str | None = None) -> nn.Module:
    """Teacher ``name``'s network with random weights, as its info record says to build it (the
    ``timm`` entry's network is the ``arch`` its section names)."""
    info = TEACHERS.info(name)
    arch = arch or info.arch
    if arch is None:
        raise ValueError(f"teacher {name!r} builds the timm network its 'arch' names; give one (e.g. arch: resnet18)")
    if info.source == "research":
        return MODELS.build(arch, num_classes=num_classes)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def _load(name: str, *, num_classes: int, checkpoint: str, channels_last: bool, arch: str | None = None) -> Teacher:
    shown = f"{name}:{arch}" if arch else name
    check_teacher_checkpoint(checkpoint)  # before building a net of up to 84M parameters
    net = teacher_network(name, num_classes=num_classes, arch=arch)
    load_teacher_weights(net, checkpoint, teacher=shown, num_classes=num_classes)
    return Teacher(net, name=shown, num_classes=num_classes, channels_last=channels_last)


#: The teachers of one architecture each: the entry's name is its network's (in timm or this package's
#: MODELS, its ``source``), with the resolution its weights are trained at and what it is. The CIFAR
#: networks are trained by this package's engine.
_FIXED = {
    "regnety_160": ("timm", 224, "RegNetY-16GF (84M parameters), the paper's teacher (Sec. 5.2)."),
    "regnety_080": ("timm", 224, "RegNetY-8GF (39M parameters), a smaller teacher of the paper's Table 2."),
    "regnety_040": ("timm", 224, "RegNetY-4GF (21M parameters), the smallest teacher of the paper's Table 2."),
    "resnet50": ("timm", 224, "ResNet-50 (timm ``resnet50``), a common, cheaper ImageNet teacher (not in the paper)."),
    "resnet18_cifar": ("research", 32, "ResNet-18 with a CIFAR stem (MODELS ``resnet18_cifar``)."),
    "resnet10_cifar": ("research", 32, "Narrow ResNet-10 with a CIFAR stem (MODELS ``resnet10_cifar``), for fast tests."),
    "resnet9_cifar": ("research", 32, "Page's ResNet-9 for CIFAR (MODELS ``resnet9_cifar``)."),
    "resnet9_slim_cifar": ("research", 32, "Half-width ResNet-9 (MODELS ``resnet9_slim_cifar``): the fast CIFAR teacher."),
    "airbench_cifar": ("research", 32, "Jordan's airbench94 network (MODELS ``airbench_cifar``)."),
}


def _fixed(name: str, doc: str) -> Callable[..., Teacher]:
    def build(*, num_classes: int, checkpoint: str, channels_last: bool = False) -> Teacher:
        return _load(name, num_classes=num_classes, checkpoint=checkpoint, channels_last=channels_last)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    return build


for _name, (_source, _img_size, _doc) in _FIXED.items():
    TEACHERS.register(_name, TeacherInfo(arch=_name, source=_source, img_size=_img_size))(_fixed(_name, _doc))


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
    return _load("timm", num_classes=num_classes, checkpoint=checkpoint, channels_last=channels_last, arch=arch)
