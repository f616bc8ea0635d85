"""timm's Mixup / CutMix with a batch's random draws apart from their application.

timm's ``Mixup.__call__`` draws lambda (and CutMix's box) from numpy's global generator, then cuts
the box out with Python slices: a graph break in a compiled step, and a box-dependent shape that a
CUDA graph cannot replay. :class:`SplitMixup` draws on the host with timm's own calls (the same
numpy stream, seeded by the loop each step) into a small tensor, and applies it as a pure tensor
function of (images, targets, draws): no host read, no data-dependent shape.
"""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.mixup import cutmix_bbox_and_lam, one_hot
from torch import Tensor

# The draw tensor's layout (float32): lambda, 1 - lambda (both rounded from timm's float64, so the
# blend equals timm's), 1 if the batch is cut, and the box's rows [y0, y1) and columns [x0, x1).
LAM, ONE_MINUS_LAM, CUT, Y0, Y1, X0, X1 = range(7)


class SplitMixup(Mixup):
    """timm's Mixup whose ``batch`` mode is :meth:`draw` (host) then :meth:`apply` (tensors).

    ``mix.apply(images, targets, mix.draw(images.shape, images.device))`` mixes as ``mix(images, targets)`` does, with
    the same draws. In ``pair`` and ``elem`` modes (a lambda per image) :meth:`draw` returns None
    and :meth:`apply` runs timm's own call.
    """

    def draw(self, shape: torch.Size | tuple[int, ...], device: torch.device) -> Tensor | None:
        """The mixing of a batch of ``shape`` (B, 3, H, W), drawn from numpy as timm draws it, on
        ``device`` (no sync)."""
        if self.mode != "batch":
            return None
        lam, use_cutmix = self._params_per_batch()
        box, cut = (0, 0, 0, 0), False
        if lam != 1.0 and use_cutmix:  # timm mixes nothing at lambda 1, CutMix included
            box, lam = cutmix_bbox_and_lam(shape, lam, ratio_minmax=self.cutmix_minmax, correct_lam=self.correct_lam)
            cut = True
        values = torch.tensor([lam, 1.0 - lam, float(cut), *box], dtype=torch.float32)
        if torch.device(device).type == "cuda":  # a copy from pinned memory does not make the host wait
            values = values.pin_memory()
        return values.to(device, non_blocking=True)

    def apply(self, images: Tensor, targets: Tensor, drawn: Tensor | None) -> tuple[Tensor, Tensor]:
        """Mixed ``(B, 3, H, W)`` images and ``(B, classes)`` soft targets, smoothed as timm's.

        Each image is paired with its mirror in the batch (``flip(0)``), as timm pairs them.
        """
        if drawn is None:
            return self(images, targets)
        flipped = images.flip(0)  # (B, 3, H, W): each image's partner
        blended = images * drawn[LAM] + flipped * drawn[ONE_MINUS_LAM]
        rows = torch.arange(images.shape[-2], device=images.device, dtype=drawn.dtype)
        cols = torch.arange(images.shape[-1], device=images.device, dtype=drawn.dtype)
        inside = ((rows >= drawn[Y0]) & (rows < drawn[Y1]))[:, None] & ((cols >= drawn[X0]) & (cols < drawn[X1]))  # (H, W)
        cut = torch.where(inside, flipped, images)
        mixed = torch.where(drawn[CUT] > 0, cut, blended)
        off = self.label_smoothing / self.num_classes
        first = one_hot(targets, self.num_classes, on_value=1.0 - self.label_smoothing + off, off_value=off)
        second = one_hot(targets.flip(0), self.num_classes, on_value=1.0 - self.label_smoothing + off, off_value=off)
        return mixed, first * drawn[LAM] + second * drawn[ONE_MINUS_LAM]  # (B, classes)
