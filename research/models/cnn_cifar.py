"""ResNets for 32x32 inputs (CIFAR), built from timm's ``ResNet`` with a CIFAR stem.

They are plain classifiers (``distilled=False``): the same engine trains them from scratch so that
they can serve as teachers for a distilled DeiT on CIFAR (``research.teachers``), like RegNetY-16GF
does on ImageNet in the paper (Touvron et al. 2021, Sec. 5.2).

The only change from timm's ImageNet ResNet is the stem. The ImageNet stem (7x7 stride-2 conv, then
3x3 stride-2 max-pool) divides the resolution by 4 before the first stage, which leaves 8x8 maps at
32x32 input; the CIFAR ResNets of He et al. 2016 (Sec. 4.2, https://arxiv.org/abs/1512.03385) use a
single 3x3 stride-1 conv and no pooling instead.
"""

from __future__ import annotations

import timm
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from research.models.params import DropPathRate, ImgSize
from research.registry import MODELS, ModelInfo

CNN = ModelInfo(distilled=False, family="cnn", default_img_size=32)  # CIFAR networks

__all__ = ["ResNet9", "resnet10_cifar", "resnet18_cifar", "resnet9_cifar", "resnet9_slim_cifar"]


def _cifar_stem(net: ResNet, *, in_chans: int = 3) -> ResNet:
    """Replace ``net``'s stem by a 3x3 stride-1 conv without max-pool; keeps ``bn1``/``act1``."""
    width = net.bn1.num_features  # the stem's output width, which ``layer1`` was built for
    net.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    # Same init as timm's ResNet.init_weights gives every other conv.
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net


@MODELS.register("resnet18_cifar", CNN)
def resnet18_cifar(*, num_classes: int = 1000, img_size: ImgSize = 32, drop_path_rate: DropPathRate = 0.0) -> ResNet:
    """ResNet-18 (timm ``resnet18``) with a CIFAR stem; 11.2M parameters, 4x4 final maps at 32x32.

    Args:
        num_classes: Classifier outputs.
        img_size: Unused (fully convolutional with global pooling); kept so every MODELS builder
            shares one signature.
        drop_path_rate: Stochastic depth rate, linearly increasing over the residual blocks.
    """
    del img_size
    net = timm.create_model("resnet18", pretrained=False, num_classes=num_classes, drop_path_rate=drop_path_rate)
    return _cifar_stem(net)


@MODELS.register("resnet10_cifar", CNN)
def resnet10_cifar(*, num_classes: int = 1000, img_size: ImgSize = 32, drop_path_rate: DropPathRate = 0.0) -> ResNet:
    """A narrow ResNet-10 with a CIFAR stem: one basic block per stage, widths 16/32/64/128; 0.3M parameters.

    Small enough to train as a teacher on 2 CPU cores in tests and smoke runs. (timm's ``ResNet``
    always runs four stages, hence not the three-stage ResNet-8 of He et al.) Arguments as
    :func:`resnet18_cifar`.
    """
    del img_size
    net = ResNet(
        block=BasicBlock,
        layers=(1, 1, 1, 1),
        channels=(16, 32, 64, 128),
        # timm's single-conv stem is always 64 wide; the "deep" stem is 2 * stem_width wide, so this
        # makes layer1 expect 16 channels (no projection). _cifar_stem then swaps in one 3x3 conv.
        stem_type="deep",
        stem_width=8,
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
    )
    return _cifar_stem(net)


class _ConvBnRelu(nn.Sequential):
    """3x3 conv, BatchNorm, ReLU; with ``pool``, a 2x2 max-pool right after the conv, so that the norm
    and the activation run on a quarter of the pixels (Page's final layout)."""

    def __init__(self, in_chans: int, out_chans: int, *, pool: bool = False) -> None:
        super().__init__(
            nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1, bias=False),
            *([nn.MaxPool2d(2)] if pool else []),
            nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True),
        )


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_ConvBnRelu(width, width), _ConvBnRelu(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class ResNet9(nn.Sequential):
    """The 9-layer ResNet of Page's DAWNBench CIFAR-10 entry (2018): prep conv, then three stages
    (conv, 2x2 max-pool, BatchNorm, ReLU; a residual pair on the first and last), global max-pool, a
    linear head and a fixed ``logit_scale`` (Page's 0.125). Cheaper per image than ResNet-18 with its CIFAR stem, and
    it reaches >90% in a few epochs, so it is the CIFAR teacher a 2-core CPU can train in minutes.
    Not in timm, hence written here.

    The scale shrinks the head's effective learning rate: at the high SGD rates that train the
    convolutions fast (0.4 per 512 images), an unscaled head's logits grow early and the net trains
    worse (docs/RESULTS.md, teacher).
    """

    def __init__(self, *, num_classes: int, width: int = 64, logit_scale: float = 0.125) -> None:
        w = width
        super().__init__(
            _ConvBnRelu(3, w),  # (B, w, 32, 32)
            _ConvBnRelu(w, 2 * w, pool=True),  # (B, 2w, 16, 16)
            _Residual(2 * w),
            _ConvBnRelu(2 * w, 4 * w, pool=True),  # (B, 4w, 8, 8)
            _ConvBnRelu(4 * w, 8 * w, pool=True),  # (B, 8w, 4, 4)
            _Residual(8 * w),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),  # (B, 8w)
            nn.Linear(8 * w, num_classes),
            _Scale(logit_scale),
        )


@MODELS.register("resnet9_cifar", CNN)
def resnet9_cifar(*, num_classes: int = 1000, img_size: ImgSize = 32, drop_path_rate: DropPathRate = 0.0) -> ResNet9:
    """Page's ResNet-9 (widths 64/128/256/512); ``img_size`` and ``drop_path_rate`` are unused."""
    del img_size, drop_path_rate
    return ResNet9(num_classes=num_classes, width=64)


@MODELS.register("resnet9_slim_cifar", CNN)
def resnet9_slim_cifar(*, num_classes: int = 1000, img_size: ImgSize = 32, drop_path_rate: DropPathRate = 0.0) -> ResNet9:
    """ResNet-9 at half width (32/64/128/256): about 4x fewer FLOPs, the fast CIFAR teacher."""
    del img_size, drop_path_rate
    return ResNet9(num_classes=num_classes, width=32)
