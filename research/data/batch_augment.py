"""Crop, flip, cutout and normalisation of whole ``uint8`` batches, for datasets kept in memory.

A recipe whose per-image transform is only a padded random crop, a flip and cutout (the CIFAR CNN
teacher's) spends most of its data time in per-image Python and PIL calls, and on a small CPU the
loader worker that does them takes cycles from the training step. :class:`BatchAugment` draws the
same random crops, flips and squares for a whole batch and applies them with one gather and one mask
on the ``(B, H, W, 3)`` array, in the training process: no worker at all. :class:`InMemoryBatches`
serves an epoch's batches that way.

The result is the per-image pipeline's in distribution: torchvision's ``RandomCrop(size, padding=p,
padding_mode=m)`` (zero or reflect padding, offsets uniform in ``[0, H + 2p - size]``),
``RandomHorizontalFlip(hflip)``, ``ToTensor``, ``Normalize(mean, std)`` and, for cutout,
``RandomErasing(p=1, value=0)`` with a fixed ``cutout x cutout`` square placed uniformly inside the
image. The random numbers themselves differ, so a run switched from one path to the other sees other
augmentations, not other data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["BatchAugment", "BatchAugmentParams", "InMemoryBatches", "alternating_flips"]


@dataclass(frozen=True)
class BatchAugmentParams:
    """Per-image offsets into the padded image, ``(B,)`` each, which images are mirrored, and the
    top-left corners of the cutout squares in the output (None without cutout)."""

    top: Tensor
    left: Tensor
    flip: Tensor
    cut_top: Tensor | None = None
    cut_left: Tensor | None = None

    def __getitem__(self, window: slice) -> BatchAugmentParams:
        cut = (None, None) if self.cut_top is None or self.cut_left is None else (self.cut_top[window], self.cut_left[window])
        return BatchAugmentParams(self.top[window], self.left[window], self.flip[window], *cut)


class BatchAugment:
    """Padded random crop, horizontal flip, ``ToTensor``, ``Normalize``, cutout, on ``(B, H, W, 3)`` uint8.

    Args:
        size: Output height and width.
        padding: Pixels added on every side before cropping (0: crop without padding).
        hflip: Probability that an image is mirrored.
        mean, std: Per-channel normalisation of the ``[0, 1]`` pixels.
        cutout: Side of the square set to 0 (the mean colour) in every normalised image; 0 = off.
        alternate_flip: Mirror by :func:`alternating_flips` instead of at random (``hflip`` must be
            0.5); :class:`InMemoryBatches` applies it, since it needs the images' rows and the epoch.
        padding_mode: ``constant`` pads with zeros, ``reflect`` with the image mirrored at its
            border (without repeating the edge pixel), as ``RandomCrop(padding_mode=...)`` does.
    """

    def __init__(
        self,
        size: int,
        padding: int,
        hflip: float,
        mean: Sequence[float],
        std: Sequence[float],
        cutout: int = 0,
        *,
        alternate_flip: bool = False,
        padding_mode: str = "constant",
    ) -> None:
        if padding_mode not in ("constant", "reflect"):
            raise ValueError(f"padding_mode is 'constant' or 'reflect', got {padding_mode!r}")
        if size < 1 or padding < 0 or not 0.0 <= hflip <= 1.0 or not 0 <= cutout <= size:
            raise ValueError(
                "need size >= 1, padding >= 0, 0 <= hflip <= 1 and 0 <= cutout <= size, "
                f"got {size}, {padding}, {hflip}, {cutout}"
            )
        if alternate_flip and hflip != 0.5:
            raise ValueError(f"alternate_flip mirrors half of the images each epoch: it needs hflip=0.5, got {hflip}")
        self.size, self.padding, self.hflip, self.cutout = size, padding, hflip, cutout
        self.alternate_flip = alternate_flip
        self.padding_mode = padding_mode
        # Folded so that normalising is one multiply-add: (x / 255 - mean) / std.
        self._scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1)

    def sample(self, count: int, height: int, width: int, generator: torch.Generator | None = None) -> BatchAugmentParams:
        """Draw crop offsets, flips and cutout squares for ``count`` images of ``height`` x ``width``."""
        room_y, room_x = height + 2 * self.padding - self.size, width + 2 * self.padding - self.size
        if room_y < 0 or room_x < 0:
            raise ValueError(
                f"a {self.size}px crop does not fit {width}x{height} images padded by {self.padding}"
            )
        if self.padding_mode == "reflect" and self.padding >= min(height, width):
            raise ValueError(f"reflect padding of {self.padding} needs images larger than that, got {width}x{height}")
        params = BatchAugmentParams(
            top=torch.randint(0, room_y + 1, (count,), generator=generator),
            left=torch.randint(0, room_x + 1, (count,), generator=generator),
            flip=torch.rand(count, generator=generator) < self.hflip,
        )
        if not self.cutout:
            return params
        room = self.size - self.cutout
        corners = torch.randint(0, room + 1, (2, count), generator=generator)
        return BatchAugmentParams(params.top, params.left, params.flip, cut_top=corners[0], cut_left=corners[1])

    def apply(self, pixels: Tensor, params: BatchAugmentParams) -> Tensor:
        """``(B, H, W, 3)`` uint8 -> normalised ``(B, 3, size, size)`` float32, with ``params``' crops."""
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected (B, H, W, 3) uint8 pixels, got {pixels.dtype} {tuple(pixels.shape)}")
        p = self.padding
        steps = torch.arange(self.size)
        rows = params.top[:, None] + steps  # (B, size), in the padded image
        # A mirrored crop reads its columns right to left: crop and flip are one gather.
        cols = params.left[:, None] + torch.where(params.flip[:, None], self.size - 1 - steps, steps)  # (B, size)
        if self.padding_mode == "reflect":  # read the padding from the image itself: no padded copy
            source = pixels
            rows, cols = _reflect(rows - p, pixels.shape[1]), _reflect(cols - p, pixels.shape[2])
        else:
            source = torch.nn.functional.pad(pixels, (0, 0, p, p, p, p)) if p else pixels  # (B, H+2p, W+2p, 3)
        batch = torch.arange(len(pixels))[:, None, None]
        crops = source[batch, rows[:, :, None], cols[:, None, :]]  # (B, size, size, 3)
        images = self.normalise(crops)
        if self.cutout:
            if params.cut_top is None or params.cut_left is None:
                raise ValueError(f"{self!r} needs cutout corners in its params: draw them with sample()")
            dy = steps - params.cut_top[:, None]  # (B, size): row offset from the square's top
            dx = steps - params.cut_left[:, None]
            in_rows, in_cols = (dy >= 0) & (dy < self.cutout), (dx >= 0) & (dx < self.cutout)
            images.masked_fill_((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)  # mask (B, 1, size, size)
        return images

    def normalise(self, pixels: Tensor) -> Tensor:
        """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32, as ``ToTensor`` then ``Normalize``."""
        images = pixels.permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        return (images * self._scale + self._shift).contiguous()

    def __repr__(self) -> str:
        flip = ", alternate_flip=True" if self.alternate_flip else ""
        mode = f", padding_mode={self.padding_mode!r}" if self.padding_mode != "constant" else ""
        return (
            f"{type(self).__name__}(size={self.size}, padding={self.padding}{mode}, hflip={self.hflip}, "
            f"cutout={self.cutout}{flip})"
        )


def _reflect(index: Tensor, length: int) -> Tensor:
    """Map indices in ``[-(length - 1), 2 * (length - 1)]`` into ``[0, length)`` by mirroring at both ends."""
    last = length - 1
    return last - (last - index.abs()).abs()


def alternating_flips(rows: Tensor, epoch: int, num_rows: int, seed: int) -> Tensor:
    """Which of the images at ``rows`` to mirror in ``epoch``: Jordan's derandomised flip (airbench, 2024).

    A random half of the ``num_rows`` images, fixed by ``seed``, is mirrored in even epochs and the
    other half in odd epochs: each image is seen both ways in every two epochs, where independent
    coin flips show a quarter of them the same way twice.
    """
    mirrored_first = torch.rand(num_rows, generator=torch.Generator().manual_seed(seed)) < 0.5  # (num_rows,)
    return mirrored_first[rows] ^ bool(epoch % 2)


class InMemoryBatches:
    """Batches of a ``(N, H, W, 3)`` uint8 array, transformed whole by a :class:`BatchAugment`.

    Args:
        pixels: All images of the dataset.
        targets: Their class indices.
        indices: The epoch's images, in order (a sampler's output); cut into ``batch_size`` chunks, the
            last one dropped if short and ``drop_last``.
        transform: What each batch goes through.
        train: Random crop, flip and cutout (True) or normalisation only (False, for evaluation).
        generator: Source of the random draws. They are all drawn when the object is made, so the
            batches from ``skip_batches`` on are the same as those of a full pass.
        skip_batches: Leading batches to leave out (a mid-epoch resume).
        epoch, flip_seed: The epoch and the run's seed, for a transform with ``alternate_flip``.
    """

    def __init__(
        self,
        pixels: np.ndarray,
        targets: Sequence[int],
        indices: Sequence[int],
        batch_size: int,
        transform: BatchAugment,
        *,
        train: bool,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        skip_batches: int = 0,
        epoch: int = 0,
        flip_seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.pixels = torch.from_numpy(pixels)  # shares memory with the array
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        count = len(indices) // batch_size * batch_size if drop_last else len(indices)
        self.indices = torch.as_tensor(indices[:count], dtype=torch.long)
        self.batch_size, self.transform = batch_size, transform
        height, width = pixels.shape[1:3]
        self.params = transform.sample(count, height, width, generator) if train else None
        if self.params is not None and transform.alternate_flip:
            flips = alternating_flips(self.indices, epoch, len(pixels), flip_seed)
            self.params = dataclasses.replace(self.params, flip=flips)
        self.start = skip_batches * batch_size

    def __len__(self) -> int:
        return max(0, -(-(len(self.indices) - self.start) // self.batch_size))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for begin in range(self.start, len(self.indices), self.batch_size):
            chosen = self.indices[begin : begin + self.batch_size]
            pixels = self.pixels[chosen]
            if self.params is None:
                images = self.transform.normalise(pixels)
            else:
                images = self.transform.apply(pixels, self.params[begin : begin + len(chosen)])
            yield images, self.targets[chosen]
