"""The train transform on whole ``uint8`` batches, on the training device, for datasets kept in memory.

A recipe whose per-image transform is only a padded random crop, a flip and cutout (the CIFAR CNN
teacher's) spends most of its data time in per-image Python and PIL calls, and on a small CPU the
loader worker that does them takes cycles from the training step. :class:`BatchAugment` draws the
same random crops, flips and squares for a whole batch and applies them with one gather and one mask
on the ``(B, H, W, 3)`` array, in the training process: no worker at all. :class:`InMemoryBatches`
serves an epoch's batches that way.

:class:`BatchRecipe` runs a whole recipe that way: the crop and flip (and cutout) of a geometry
(:class:`BatchAugment`, or :class:`BatchResizedCrop` for timm's RandomResizedCrop), then the ops of
:mod:`research.data.batch_ops`, each image drawing its own parameters (when, and from which generator:
:class:`BatchRecipe`, :class:`InMemoryBatches`).

The result is the per-image pipeline's in distribution: torchvision's ``RandomCrop(size, padding=p,
padding_mode=m)`` (zero or reflect padding, offsets uniform in ``[0, H + 2p - size]``),
``RandomHorizontalFlip(hflip)``, ``ToTensor``, ``Normalize(mean, std)`` and, for cutout,
``RandomErasing(p=1, value=0)`` with a fixed ``cutout x cutout`` square placed uniformly inside the
image. The random numbers themselves differ, so a run switched from one path to the other sees other
augmentations, not other data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from research.data import pil_ops
from research.data.batch_ops import BatchOp, Params

__all__ = ["BatchAugment", "BatchAugmentParams", "BatchDraws", "BatchRecipe", "BatchResizedCrop", "InMemoryBatches", "alternating_flips"]

@dataclass(frozen=True)
class BatchAugmentParams:
    """Per-image offsets into the padded image, ``(B,)`` each, which images are mirrored, and the
    top-left corners of the cutout squares in the output (None without cutout)."""

    top: Tensor
    left: Tensor
    flip: Tensor
    cut_top: Tensor | None = None
    cut_left: Tensor | None = None
    height: Tensor | None = None  # the crop boxes' sizes, for a resized crop
    width: Tensor | None = None
    bicubic: Tensor | None = None  # per image, for a resized crop with random interpolation

    def __getitem__(self, window: slice | Tensor) -> BatchAugmentParams:
        return BatchAugmentParams(**{k: None if v is None else v[window] for k, v in vars(self).items()})

    def to(self, device: torch.device | str) -> BatchAugmentParams:
        return BatchAugmentParams(**{k: None if v is None else v.to(device) for k, v in vars(self).items()})


@dataclass(frozen=True)
class BatchDraws:
    """Every random parameter of one batch: the crops (drawn with the epoch) and each op's draws, in order."""

    geometry: BatchAugmentParams
    ops: tuple[Params, ...] = ()

    def __getitem__(self, window: slice) -> BatchDraws:
        """The draws of the images in ``window`` (views: an epoch's draws, cut into batches at no cost)."""
        return BatchDraws(self.geometry[window], tuple({k: v[window] for k, v in params.items()} for params in self.ops))


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
        # The knobs were checked by the recipe's techniques (research/data/techniques.py: Crop, Flip, Cutout).
        self.size, self.padding, self.hflip, self.cutout = size, padding, hflip, cutout
        self.alternate_flip = alternate_flip
        self.padding_mode = padding_mode
        # Folded so that normalising is one multiply-add: (x / 255 - mean) / std.
        std_t, mean_t = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
        self._folded = (tuple((1.0 / (255.0 * std_t)).tolist()), tuple((-mean_t / std_t).tolist()))

    def _flips_and_cutout(self, params: BatchAugmentParams, generator: torch.Generator | None) -> BatchAugmentParams:
        count = len(params.top)
        params = dataclasses.replace(params, flip=torch.rand(count, generator=generator) < self.hflip)
        if not self.cutout:
            return params
        corners = torch.randint(0, self.size - self.cutout + 1, (2, count), generator=generator)
        return dataclasses.replace(params, cut_top=corners[0], cut_left=corners[1])

    def sample(self, count: int, height: int, width: int, generator: torch.Generator | None = None) -> BatchAugmentParams:
        """Draw crop offsets, flips and cutout squares for ``count`` images of ``height`` x ``width``."""
        room_y, room_x = height + 2 * self.padding - self.size, width + 2 * self.padding - self.size
        if room_y < 0 or room_x < 0:
            raise ValueError(
                f"a {self.size}px crop does not fit {width}x{height} images padded by {self.padding}"
            )
        if self.padding_mode == "reflect" and self.padding >= min(height, width):
            raise ValueError(f"reflect padding of {self.padding} needs images larger than that, got {width}x{height}")
        top = torch.randint(0, room_y + 1, (count,), generator=generator)
        left = torch.randint(0, room_x + 1, (count,), generator=generator)
        return self._flips_and_cutout(BatchAugmentParams(top, left, top), generator)

    def apply(self, pixels: Tensor, params: BatchAugmentParams) -> Tensor:
        """``(B, H, W, 3)`` uint8 -> normalised ``(B, 3, size, size)`` float32, with ``params``' crops."""
        return self.cut(self.normalise_planar(self.geometry(pixels, params)), params)

    def geometry(self, pixels: Tensor, params: BatchAugmentParams) -> Tensor:
        """Crop and flip: ``(B, H, W, 3)`` uint8 -> ``(B, 3, size, size)`` float32 pixel values."""
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected (B, H, W, 3) uint8 pixels, got {pixels.dtype} {tuple(pixels.shape)}")
        p = self.padding
        steps = pil_ops.constant(tuple(range(self.size)), pixels.device, torch.long)
        backwards = pil_ops.constant(tuple(range(self.size - 1, -1, -1)), pixels.device, torch.long)
        rows = params.top[:, None] + steps  # (B, size), in the padded image
        # A mirrored crop reads its columns right to left: crop and flip are one gather.
        cols = params.left[:, None] + torch.where(params.flip[:, None], backwards, steps)  # (B, size)
        if self.padding_mode == "reflect":  # read the padding from the image itself: no padded copy
            source = pixels
            rows, cols = _reflect(rows - p, pixels.shape[1]), _reflect(cols - p, pixels.shape[2])
        else:
            source = torch.nn.functional.pad(pixels, (0, 0, p, p, p, p)) if p else pixels  # (B, H+2p, W+2p, 3)
        batch = pil_ops.constant(tuple(range(len(pixels))), pixels.device, torch.long)[:, None, None]
        crops = source[batch, rows[:, :, None], cols[:, None, :]]  # (B, size, size, 3)
        return crops.permute(0, 3, 1, 2).float()  # (B, 3, size, size)

    def cut(self, images: Tensor, params: BatchAugmentParams) -> Tensor:
        """Cutout: the drawn square of every normalised image set to 0."""
        if not self.cutout:
            return images
        if params.cut_top is None or params.cut_left is None:
            raise ValueError(f"{self!r} needs cutout corners in its params: draw them with sample()")
        steps = torch.arange(self.size, device=images.device)
        dy = steps - params.cut_top[:, None]  # (B, size): row offset from the square's top
        dx = steps - params.cut_left[:, None]
        in_rows, in_cols = (dy >= 0) & (dy < self.cutout), (dx >= 0) & (dx < self.cutout)
        return images.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)  # mask (B, 1, size, size)

    def normalise_planar(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` float pixel values in [0, 255] -> normalised, as ``ToTensor`` then ``Normalize``."""
        scale = pil_ops.constant(self._folded[0], images.device, torch.float32).view(1, 3, 1, 1)
        shift = pil_ops.constant(self._folded[1], images.device, torch.float32).view(1, 3, 1, 1)
        return torch.addcmul(shift, images, scale)

    def __repr__(self) -> str:
        flip = ", alternate_flip=True" if self.alternate_flip else ""
        mode = f", padding_mode={self.padding_mode!r}" if self.padding_mode != "constant" else ""
        return (
            f"{type(self).__name__}(size={self.size}, padding={self.padding}{mode}, hflip={self.hflip}, "
            f"cutout={self.cutout}{flip})"
        )


class BatchResizedCrop(BatchAugment):
    """timm's ``RandomResizedCropAndInterpolation`` then a flip (and cutout), on whole batches.

    Each image draws its box as torchvision's ``RandomResizedCrop.get_params`` does (10 attempts at a
    scale and a log-uniform aspect ratio, the first that fits, else the centre crop), and the box is
    resized with Pillow's filters (:func:`pil_ops.resized_crop`).

    Args:
        size: Output height and width.
        scale, ratio: Area fraction and aspect-ratio ranges.
        interpolation: ``bicubic``, ``bilinear``, ``nearest``, or ``random`` (bilinear or bicubic per image).
        hflip, mean, std, cutout, alternate_flip: As in :class:`BatchAugment`.
    """

    _CODES = {"nearest": pil_ops.NEAREST, "bilinear": pil_ops.BILINEAR, "bicubic": pil_ops.BICUBIC}

    def __init__(
        self,
        size: int,
        scale: Sequence[float],
        ratio: Sequence[float],
        interpolation: str,
        hflip: float,
        mean: Sequence[float],
        std: Sequence[float],
        cutout: int = 0,
        *,
        alternate_flip: bool = False,
    ) -> None:
        super().__init__(size, 0, hflip, mean, std, cutout, alternate_flip=alternate_flip)
        self.scale, self.ratio, self.interpolation = tuple(scale), tuple(ratio), interpolation

    def sample(self, count: int, height: int, width: int, generator: torch.Generator | None = None) -> BatchAugmentParams:
        area = height * width
        target = (torch.rand(count, 10, generator=generator, dtype=torch.float64) * (self.scale[1] - self.scale[0]) + self.scale[0]) * area
        low, high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(torch.rand(count, 10, generator=generator, dtype=torch.float64) * (high - low) + low)
        w, h = torch.round(torch.sqrt(target * aspect)).long(), torch.round(torch.sqrt(target / aspect)).long()
        fits = (w <= width) & (h <= height)  # (B, 10)
        first = fits.long().argmax(1, keepdim=True)  # the first attempt that fits
        fallback_h, fallback_w = self._centre_box(height, width)
        h = torch.where(fits.any(1), h.gather(1, first).squeeze(1), fallback_h)
        w = torch.where(fits.any(1), w.gather(1, first).squeeze(1), fallback_w)
        top = torch.floor(torch.rand(count, generator=generator, dtype=torch.float64) * (height - h + 1)).long()
        left = torch.floor(torch.rand(count, generator=generator, dtype=torch.float64) * (width - w + 1)).long()
        # The centre crop of the fallback is centred, not drawn.
        top = torch.where(fits.any(1), top, (height - h) // 2)
        left = torch.where(fits.any(1), left, (width - w) // 2)
        bicubic = torch.rand(count, generator=generator) < 0.5 if self.interpolation == "random" else None
        params = BatchAugmentParams(top, left, top, height=h, width=w, bicubic=bicubic)
        return self._flips_and_cutout(params, generator)

    def _centre_box(self, height: int, width: int) -> tuple[int, int]:
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            return int(round(width / min(self.ratio))), width
        if in_ratio > max(self.ratio):
            return height, int(round(height * max(self.ratio)))
        return height, width

    def geometry(self, pixels: Tensor, params: BatchAugmentParams) -> Tensor:
        if params.height is None or params.width is None:
            raise ValueError(f"{self!r} needs crop boxes in its params: draw them with sample()")
        images = pixels.permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        box = torch.stack([params.top, params.left, params.height, params.width], dim=1)  # (B, 4)
        if params.bicubic is not None:  # timm's random interpolation: bilinear or bicubic per image
            out = torch.where(
                params.bicubic[:, None, None, None],
                pil_ops.resized_crop(images, box, self.size, pil_ops.BICUBIC),
                pil_ops.resized_crop(images, box, self.size, pil_ops.BILINEAR),
            )
        else:
            out = pil_ops.resized_crop(images, box, self.size, self._CODES[self.interpolation])
        return torch.where(params.flip[:, None, None, None], out.flip(-1), out)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"interpolation={self.interpolation!r}, hflip={self.hflip}, cutout={self.cutout})"
        )


class BatchRecipe:
    """A recipe's train transform on whole batches: ``geometry``'s crop and flip, ``pixel_ops`` on the
    integer pixels, normalisation, ``tensor_ops`` on the normalised images, then cutout.

    The ops are :mod:`research.data.batch_ops` objects (the recipe's techniques provide them,
    :mod:`research.data.techniques`). A batch runs in two steps, so that a training step can compile
    the second: :meth:`draw` (every random number, from a generator, on the device) and
    :meth:`transform`, a pure function of the pixels and those draws::

        draws = recipe.draw(params[window], generator)  # outside the compiled region
        images = recipe.transform(pixels, draws)  # (B, H, W, 3) uint8 -> (B, 3, size, size) float32
    """

    def __init__(self, geometry: BatchAugment, pixel_ops: Sequence[BatchOp] = (), tensor_ops: Sequence[BatchOp] = ()) -> None:
        self.geometry, self.pixel_ops, self.tensor_ops = geometry, tuple(pixel_ops), tuple(tensor_ops)

    def sample(self, count: int, height: int, width: int, generator: torch.Generator | None = None) -> BatchAugmentParams:
        return self.geometry.sample(count, height, width, generator)

    def draw(self, params: BatchAugmentParams, generator: torch.Generator | None = None, *, noise: bool = True) -> BatchDraws:
        """The ops' draws for the images whose crops are ``params`` (on their device), from ``generator``
        (a generator on that device; None: one seeded from the global RNG). ``noise=False`` leaves out
        the per-pixel noise, for draws made once for an epoch's images (:meth:`add_noise` adds it per batch)."""
        device = params.top.device
        if generator is None and (self.pixel_ops or self.tensor_ops):
            generator = torch.Generator(device).manual_seed(int(torch.randint(0, 2**62, ())))
        size = (self.geometry.size, self.geometry.size)
        ops = tuple(op.draw(len(params.top), size, generator, device) for op in (*self.pixel_ops, *self.tensor_ops))  # type: ignore[arg-type]
        draws = BatchDraws(params, ops)
        return self.add_noise(draws, generator) if noise else draws  # type: ignore[arg-type]

    def add_noise(self, draws: BatchDraws, generator: torch.Generator) -> BatchDraws:
        """``draws`` with each op's per-pixel noise for its images (ops with a ``noise`` method: pixel-mode erasing)."""
        count, size, device = len(draws.geometry.top), (self.geometry.size, self.geometry.size), draws.geometry.top.device
        ops = tuple(
            {**params, **op.noise(count, size, generator, device)} if hasattr(op, "noise") else params
            for op, params in zip((*self.pixel_ops, *self.tensor_ops), draws.ops)
        )  # fmt: skip
        return BatchDraws(draws.geometry, ops)

    def transform(self, pixels: Tensor, draws: BatchDraws) -> Tensor:
        """``(B, H, W, 3)`` uint8 -> normalised ``(B, 3, size, size)`` float32: a pure function of its arguments."""
        images = self.geometry.geometry(pixels, draws.geometry)
        for op, params in zip(self.pixel_ops, draws.ops):
            images = op.apply(images, params)
        images = self.geometry.normalise_planar(images)
        for op, params in zip(self.tensor_ops, draws.ops[len(self.pixel_ops) :]):
            images = op.apply(images, params)
        return self.geometry.cut(images, draws.geometry)

    def apply(self, pixels: Tensor, params: BatchAugmentParams, generator: torch.Generator | None = None) -> Tensor:
        """:meth:`draw` then :meth:`transform`."""
        draws = self.draw(params, generator)
        with one_thread_on_cpu(pixels.device):
            return self.transform(pixels, draws)

    def normalise(self, pixels: Tensor) -> Tensor:
        """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32, as ``ToTensor`` then ``Normalize``."""
        return self.geometry.normalise_planar(pixels.permute(0, 3, 1, 2).float())

    def __repr__(self) -> str:
        ops = ", ".join(type(op).__name__ for op in (*self.pixel_ops, *self.tensor_ops))
        return f"{type(self).__name__}({self.geometry!r}, ops=[{ops}])"


@contextlib.contextmanager
def one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run the batch transform on one thread on the CPU: tens of small ops run fastest that way. With the
    step's threads, each op's fork-join waits for a core a neighbour holds (35x slower on 2 busy cores)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    """Batches of a ``(N, H, W, 3)`` uint8 array, transformed whole by a :class:`BatchRecipe`, on the
    array's device.

    Args:
        pixels: All images of the dataset, a numpy array or a tensor (already on the training device:
            the batches are made there).
        targets: Their class indices.
        indices: The epoch's images, in order (a sampler's output); cut into ``batch_size`` chunks, the
            last one dropped if short and ``drop_last``.
        transform: What each batch goes through.
        train: Random crop, flip and cutout (True) or normalisation only (False, for evaluation).
        generator: Source of the random draws (a CPU generator). Every draw of the epoch's images
            (crops, flips, cutout squares, the ops' parameters) is made when the object is made, the
            ops' on the device in one go; only per-pixel noise is drawn per batch, from a generator
            seeded from it then. So the batches from ``skip_batches`` on are those of a full pass, and
            a batch's draws are slices of the epoch's: no launch.
        skip_batches: Leading batches to leave out (a mid-epoch resume).
        epoch, flip_seed: The epoch and the run's seed, for a transform with ``alternate_flip``.
    """

    def __init__(
        self,
        pixels: np.ndarray | Tensor,
        targets: Sequence[int] | Tensor,
        indices: Sequence[int],
        batch_size: int,
        transform: BatchRecipe,
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
        self.pixels = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels  # shares memory
        device = self.pixels.device
        self.targets = torch.as_tensor(targets, dtype=torch.long).to(device)
        count = len(indices) // batch_size * batch_size if drop_last else len(indices)
        self.indices = torch.as_tensor(indices[:count], dtype=torch.long)
        self.batch_size, self.transform = batch_size, transform
        height, width = self.pixels.shape[1:3]
        self.params = transform.sample(count, height, width, generator) if train else None
        if self.params is not None and transform.geometry.alternate_flip:
            flips = alternating_flips(self.indices, epoch, len(self.pixels), flip_seed)
            self.params = dataclasses.replace(self.params, flip=flips)
        batches = -(-count // batch_size)
        self.seeds = torch.randint(0, 2**62, (batches,), generator=generator).tolist() if train else []
        self.draws = None
        if self.params is not None:  # the epoch's draws, from a generator on the device
            epoch_generator = torch.Generator(device).manual_seed(int(torch.randint(0, 2**62, (), generator=generator)))
            self.draws = transform.draw(self.params.to(device), epoch_generator, noise=False)
        self.device_indices = self.indices.to(device)
        self.start = skip_batches * batch_size

    def __len__(self) -> int:
        return max(0, -(-(len(self.indices) - self.start) // self.batch_size))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.draws is None:
            for pixels, targets in self._windows():
                yield self.transform.normalise(pixels), targets
            return
        for pixels, draws, targets in self.drawn():
            with one_thread_on_cpu(pixels.device):
                images = self.transform.transform(pixels, draws)
            yield images, targets

    def drawn(self) -> Iterator[tuple[Tensor, BatchDraws, Tensor]]:
        """Training batches before their transform: ``(uint8 pixels, draws, targets)``, for a step that
        runs ``transform.transform(pixels, draws)`` itself (inside a compiled region)."""
        if self.draws is None:
            raise ValueError("evaluation batches draw nothing: iterate them")
        for (pixels, targets), begin in zip(self._windows(), range(self.start, len(self.indices), self.batch_size)):
            generator = torch.Generator(pixels.device).manual_seed(self.seeds[begin // self.batch_size])
            yield pixels, self.transform.add_noise(self.draws[begin : begin + len(pixels)], generator), targets

    def _windows(self) -> Iterator[tuple[Tensor, Tensor]]:
        for begin in range(self.start, len(self.indices), self.batch_size):
            chosen = self.device_indices[begin : begin + self.batch_size]
            yield self.pixels[chosen], self.targets[chosen]
