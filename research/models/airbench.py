"""Jordan's airbench network for CIFAR-10 (2024, https://arxiv.org/abs/2404.00498), as a teacher.

A plain conv net, no residual additions: a 2x2 patch-whitening conv, then three groups of
(3x3 conv, 2x2 max-pool, BatchNorm, GELU, 3x3 conv, BatchNorm, GELU) with widths 64/256/256, a
global max-pool and a bias-free linear head whose logits are scaled by 1/9. At 32x32 it costs about
the same per image as the half-width ResNet-9 (``resnet9_slim_cifar``), and in airbench's recipe it
reaches 94% in about 10 epochs where Page's ResNet-9 needs 24 at full width.

What the network itself carries from that recipe (the optimizer here is the engine's plain SGD):

* **Patch whitening** (:class:`PatchWhitening`): the first conv's 2x2 filters are the eigenvectors of
  the covariance of 2x2 input patches, scaled by the inverse square root of their eigenvalues, with
  both signs (12 filters -> 24 channels). They are fitted once, on the first training batch the
  network sees, and never trained: only the bias learns.
* **Identity initialisation**: the first ``in_channels`` filters of every 3x3 conv start as the
  identity (Dirac), so each conv starts as a skip connection plus noise.
* **BatchNorm without a learned scale**, momentum 0.4 (airbench's 0.6 in its convention), whose shift
  learns 64 times faster than the convs under SGD (:class:`ShiftOnlyBatchNorm`).

The rest of airbench's recipe lives where every experiment can use it: Lookahead
(``optim.lookahead_every``), the reflected 2-pixel translation (``aug.crop_padding``,
``aug.crop_padding_mode``), the alternating flip (``aug.alternate_flip``) and multi-crop test-time
augmentation (``train.eval_hflip``, ``train.eval_translate``), the triangular lr schedule
(``sched.name: poly`` with ``sched.decay_rate: 1.0`` after a linear warm-up) and the whitening bias
frozen after 3 epochs (``model.whiten_bias_steps``). Not carried: weight decay on biases (timm's
optimizers leave 1-D parameters undecayed). ``experiments/teacher_cifar10.yaml`` is
the recipe.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from research.models.cnn_cifar import CNN
from research.models.params import DropPathRate, ImgSize
from research.registry import MODELS, Range

__all__ = ["AirbenchNet", "PatchWhitening", "ShiftOnlyBatchNorm", "airbench_cifar"]


class PatchWhitening(nn.Module):
    """A ``kernel_size`` x ``kernel_size`` conv (no padding) whose filters whiten the input's patches.

    The filters are a buffer, not a parameter: they are fitted from data, not trained. The first
    forward pass in training mode fits them from its batch (the engine's first training batch), the
    way Glow's ActNorm initialises from data; ``fitted`` records that, and is saved in the state dict,
    so a resumed or loaded network is not refitted. Under ``torch.distributed`` rank 0's filters are
    broadcast, so all ranks hold the same ones. The bias is an ordinary trained parameter.

    Args:
        in_chans: Input channels (3).
        kernel_size: Patch side (airbench: 2).
        eps: Added to each eigenvalue before its inverse square root, so that the near-zero
            directions of the patch covariance are not amplified without bound.
        bias_train_steps: Train the bias for this many training forward passes only, then freeze it
            (airbench94: 3 epochs' steps); 0 trains it throughout. The count (``train_steps``) is in
            the state dict, so a resumed run freezes on time. Frozen, the bias gets no gradient, so
            under DDP this needs ``find_unused_parameters``; the one-GPU recipes do not use DDP.
    """

    def __init__(self, in_chans: int = 3, *, kernel_size: int = 2, eps: float = 5e-4, bias_train_steps: int = 0) -> None:
        super().__init__()
        dims = in_chans * kernel_size**2
        self.kernel_size = kernel_size
        self.eps = eps
        self.out_chans = 2 * dims  # each whitened direction with both signs, before the GELU
        self.register_buffer("filters", torch.zeros(self.out_chans, in_chans, kernel_size, kernel_size))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.bias_train_steps = bias_train_steps
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.bias = nn.Parameter(torch.zeros(self.out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if self.training:
            if not bool(self.fitted):
                self.fit(x)
            # a host read per step only when the freeze is on (airbench reads its step counter too)
            if self.bias_train_steps and int(self.train_steps) >= self.bias_train_steps:
                bias = bias.detach()  # frozen: no gradient, so the optimizer leaves it (and its decay) alone
            self.train_steps += 1
        return F.conv2d(x, self.filters.to(x.dtype), bias.to(x.dtype))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Checkpoints written before the step counter existed (the CPU teachers) load as "0 steps".
        key = prefix + "train_steps"
        if key not in state_dict:
            state_dict = {**state_dict, key: torch.zeros((), dtype=torch.long)}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the filters from the uncentred covariance of every patch of ``images`` (B, C, H, W)."""
        k = self.kernel_size
        channels = images.shape[1]
        with torch.autocast(images.device.type, enabled=False):
            patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # (B, C, H-k+1, W-k+1, k, k)
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * k * k)  # one row a patch
            covariance = patches.T @ patches / len(patches)  # (C*k*k, C*k*k)
            eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
            scaled = eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0) + self.eps)[:, None]
            filters = scaled.flip(0).reshape(-1, channels, k, k)  # largest variance first
        self.filters.copy_(torch.cat([filters, -filters]))
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.filters, src=0)
        self.fitted.fill_(True)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, out_chans={self.out_chans}, eps={self.eps}, bias_train_steps={self.bias_train_steps}"


class ShiftOnlyBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale is fixed at 1 and whose shift learns ``shift_lr_gain`` times faster under SGD.

    The shift is stored divided by ``sqrt(shift_lr_gain)`` and multiplied back in the forward pass:
    for SGD (with or without momentum) that multiplies the shift's effective learning rate by
    ``shift_lr_gain`` and leaves its relative weight decay as it is, which is airbench's larger
    learning rate for BatchNorm biases, without a parameter group the engine would have to know of.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.4, eps: float = 1e-12, shift_lr_gain: float = 64.0) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False)
        self.gain = math.sqrt(shift_lr_gain)
        self.shift = nn.Parameter(torch.zeros(num_features))
        # A fixed unit scale, passed explicitly: with weight=None and a bias, CUDA's batch-norm backward
        # returns an empty bias gradient ("invalid gradient at index 2"); the CPU kernel does not.
        self.register_buffer("unit_scale", torch.ones(num_features), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.unit_scale, self.gain * self.shift, use_batch_stats, self.momentum, self.eps
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shift_lr_gain={self.gain**2:g}"


def _identity_init_conv(in_chans: int, out_chans: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_chans, out_chans, kernel_size=3, padding="same", bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:in_chans])  # the first in_chans filters pass their input through
    return conv


class _ConvGroup(nn.Sequential):
    """conv, 2x2 max-pool, norm, GELU, conv, norm, GELU: halves the resolution."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__(
            _identity_init_conv(in_chans, out_chans),
            nn.MaxPool2d(2),
            ShiftOnlyBatchNorm(out_chans),
            nn.GELU(),
            _identity_init_conv(out_chans, out_chans),
            ShiftOnlyBatchNorm(out_chans),
            nn.GELU(),
        )


class AirbenchNet(nn.Sequential):
    """airbench94's network: whitening, three conv groups, global max-pool, scaled bias-free head.

    Args:
        num_classes: Classifier outputs.
        widths: Output channels of the three groups (airbench94: 64, 256, 256).
        logit_scale: Fixed factor on the logits (airbench: 1/9).
    """

    def __init__(
        self, *, num_classes: int, widths: tuple[int, int, int] = (64, 256, 256), logit_scale: float = 1 / 9, whiten_bias_steps: int = 0
    ) -> None:
        whitening = PatchWhitening(3, bias_train_steps=whiten_bias_steps)
        super().__init__(
            whitening,  # (B, 24, 31, 31) at 32x32
            nn.GELU(),
            _ConvGroup(whitening.out_chans, widths[0]),  # (B, 64, 15, 15)
            _ConvGroup(widths[0], widths[1]),  # (B, 256, 7, 7)
            _ConvGroup(widths[1], widths[2]),  # (B, 256, 3, 3)
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),  # (B, 256)
            nn.Linear(widths[2], num_classes, bias=False),
        )
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.logit_scale


@MODELS.register("airbench_cifar", CNN)
def airbench_cifar(
    *,
    num_classes: int = 1000,
    img_size: ImgSize = 32,
    drop_path_rate: DropPathRate = 0.0,
    whiten_bias_steps: Annotated[int, Range(ge=0, hint="a number of steps; 0 = never")] = 0,
) -> AirbenchNet:
    """airbench94's network (widths 64/256/256); ``img_size`` and ``drop_path_rate`` are unused.

    ``whiten_bias_steps``: freeze the whitening bias after this many training steps (airbench94: 3
    epochs' worth; 0 = never), see :class:`PatchWhitening`.
    """
    del img_size, drop_path_rate
    return AirbenchNet(num_classes=num_classes, whiten_bias_steps=whiten_bias_steps)
