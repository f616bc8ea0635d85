"""timm's random per-image techniques on whole batches: every image draws its own ops and magnitudes.

Each op here is a callable ``(images, generator) -> images`` on a ``(B, 3, H, W)`` batch on any
device, built from the very objects timm's per-image path uses (its ``RandAugment`` and
``AutoAugment`` ops, probabilities, magnitudes and hparams; torchvision's ``ColorJitter`` ranges;
timm's ``RandomErasing`` settings), so both paths read one configuration. The random draws follow
timm's code line by line, vectorised over the batch (tests/data/test_batch_ops.py checks the
distributions with chi-square and Kolmogorov-Smirnov tests); the pixel work is :mod:`pil_ops`.

An op applied to some images only is computed on that subset on the CPU, and on the whole batch then
selected with ``torch.where`` on a GPU, where a data-dependent subset would make the host wait.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from research.data import pil_ops as P

__all__ = ["NotBatchable", "BatchAutoAugment", "BatchColorJitter", "BatchCutout", "BatchRandAugment", "BatchRandomErasing"]

_LEVEL_DENOM = 10.0  # timm's magnitude scale: level / 10 is the fraction of an op's range


class NotBatchable(ValueError):
    """A technique or op with no whole-batch version; the message names it and says what to do."""


def _uniform(count: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(count, generator=generator, device=device, dtype=torch.float64) * (high - low) + low


def _negate(values: Tensor, generator: torch.Generator) -> Tensor:
    """timm's ``_randomly_negate``: ``-v if random() > 0.5 else v``, per image."""
    coin = torch.rand(values.shape, generator=generator, device=values.device, dtype=torch.float64)
    return torch.where(coin > 0.5, -values, values)


def _where(mask: Tensor, images: Tensor, fn: Callable[[Tensor, Tensor | slice], Tensor]) -> Tensor:
    """``fn`` applied to the images where ``mask`` holds; ``fn(subset, index)`` reads per-image args at ``index``."""
    if images.device.type == "cpu":  # a subset is free to find here, and saves computing skipped images
        rows = mask.nonzero().squeeze(1)
        if len(rows):
            images[rows] = fn(images[rows], rows)  # in place: the batch is the pipeline's own tensor
        return images
    return torch.where(mask[:, None, None, None], fn(images, slice(None)), images)


# Op name -> (level function, image function). A level function maps magnitudes (B,) to the op's
# argument, as timm's LEVEL_TO_ARG does for one image; the image function applies it.
Level = Callable[[Tensor, dict[str, Any], torch.Generator], Tensor]


def _scaled(factor: float, negate: bool = False) -> Level:
    def level(m: Tensor, _: dict[str, Any], g: torch.Generator) -> Tensor:
        value = m / _LEVEL_DENOM * factor
        return _negate(value, g) if negate else value

    return level


def _enhance(m: Tensor, _: dict[str, Any], g: torch.Generator) -> Tensor:
    return m / _LEVEL_DENOM * 1.8 + 0.1


def _enhance_increasing(m: Tensor, _: dict[str, Any], g: torch.Generator) -> Tensor:
    return (1.0 + _negate(m / _LEVEL_DENOM * 0.9, g)).clamp(min=0.1)


def _posterize(m: Tensor, *_: Any) -> Tensor:
    return torch.floor(m / _LEVEL_DENOM * 4)


def _solarize(m: Tensor, *_: Any) -> Tensor:
    return torch.floor(m / _LEVEL_DENOM * 256).clamp(max=256)


def _translate_rel(m: Tensor, hparams: dict[str, Any], g: torch.Generator) -> Tensor:
    return _negate(m / _LEVEL_DENOM * hparams.get("translate_pct", 0.45), g)


def _translate_abs(m: Tensor, hparams: dict[str, Any], g: torch.Generator) -> Tensor:
    return _negate(m / _LEVEL_DENOM * float(hparams["translate_const"]), g)


def _desaturate_level(m: Tensor, *_: Any) -> Tensor:
    return (0.5 + 0.5 * (m / _LEVEL_DENOM)).clamp(0.5, 1.0)  # _minmax_level_to_arg(min_val=0.5, max_val=1.0)


def _desaturate(images: Tensor, level: Tensor) -> Tensor:
    return P.color(images, (1.0 - level).clamp(0.0, 1.0))  # timm: the Color factor is 1 - level


def _affine(entry: int, scale_by: str | None = None) -> Callable[..., Tensor]:
    """An op that puts its argument into one entry of the identity matrix (shear, translate)."""

    def op(images: Tensor, value: Tensor, resample: Any, fill: tuple[int, int, int]) -> Tensor:
        matrix = P.identity_matrix(len(images), images.device)
        size = {"width": images.shape[3], "height": images.shape[2], None: 1}[scale_by]
        matrix[:, entry] = value.double() * size
        return P.affine(images, matrix, resample, fill)

    return op


def _rotate(images: Tensor, degrees: Tensor, resample: Any, fill: tuple[int, int, int]) -> Tensor:
    return P.affine(images, P.rotation_matrix(degrees, images.shape[3], images.shape[2]), resample, fill)


_NONE: Level = lambda m, h, g: m  # noqa: E731  (ops without an argument ignore it)

OPS: dict[str, tuple[Level, Callable[..., Tensor], bool]] = {
    # name: (level, op, geometric: takes resample and fill)
    "AutoContrast": (_NONE, lambda x, _: P.auto_contrast(x), False),
    "Equalize": (_NONE, lambda x, _: P.equalize(x), False),
    "Invert": (_NONE, lambda x, _: P.invert(x), False),
    "Rotate": (_scaled(30.0, negate=True), _rotate, True),
    "Posterize": (_posterize, P.posterize, False),
    "PosterizeIncreasing": (lambda m, h, g: 4 - _posterize(m), P.posterize, False),
    "PosterizeOriginal": (lambda m, h, g: _posterize(m) + 4, P.posterize, False),
    "Solarize": (_solarize, P.solarize, False),
    "SolarizeIncreasing": (lambda m, h, g: 256 - _solarize(m), P.solarize, False),
    "SolarizeAdd": (lambda m, h, g: torch.floor(m / _LEVEL_DENOM * 110).clamp(max=128), P.solarize_add, False),
    "Color": (_enhance, P.color, False),
    "ColorIncreasing": (_enhance_increasing, P.color, False),
    "Contrast": (_enhance, P.contrast, False),
    "ContrastIncreasing": (_enhance_increasing, P.contrast, False),
    "Brightness": (_enhance, P.brightness, False),
    "BrightnessIncreasing": (_enhance_increasing, P.brightness, False),
    "Sharpness": (_enhance, P.sharpness, False),
    "SharpnessIncreasing": (_enhance_increasing, P.sharpness, False),
    "ShearX": (_scaled(0.3, negate=True), _affine(1), True),
    "ShearY": (_scaled(0.3, negate=True), _affine(3), True),
    "TranslateX": (_translate_abs, _affine(2), True),
    "TranslateY": (_translate_abs, _affine(5), True),
    "TranslateXRel": (_translate_rel, _affine(2, "width"), True),
    "TranslateYRel": (_translate_rel, _affine(5, "height"), True),
    "Desaturate": (_desaturate_level, _desaturate, False),
}


class _Op:
    """One of timm's ``AugmentOp``s, for a batch: draws each image's magnitude and applies the op."""

    def __init__(self, timm_op: Any) -> None:
        if timm_op.name not in OPS:
            raise NotBatchable(f"timm op {timm_op.name!r} has no whole-batch version (batched: {', '.join(OPS)})")
        self.name, self.prob, self.magnitude = timm_op.name, float(timm_op.prob), float(timm_op.magnitude)
        self.std, self.max = float(timm_op.magnitude_std), timm_op.magnitude_max
        self.hparams = dict(timm_op.hparams)
        self.level, self.fn, self.geometric = OPS[timm_op.name]
        resample = timm_op.kwargs["resample"]  # a PIL code, or a tuple timm picks from at random per call
        self.resample = tuple(int(r) for r in resample) if isinstance(resample, (tuple, list)) else int(resample)
        self.fill = tuple(int(c) for c in timm_op.kwargs["fillcolor"])

    def applies(self, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """timm: ``if prob < 1 and random() > prob: skip``."""
        if self.prob >= 1.0:
            return torch.ones(count, dtype=torch.bool, device=device)
        return torch.rand(count, generator=generator, device=device, dtype=torch.float64) <= self.prob

    def magnitudes(self, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
        m = torch.full((count,), self.magnitude, dtype=torch.float64, device=device)
        if self.std == math.inf:
            m = torch.rand(count, generator=generator, device=device, dtype=torch.float64) * self.magnitude
        elif self.std > 0:
            m = m + self.std * torch.randn(count, generator=generator, device=device, dtype=torch.float64)
        return m.clamp(0.0, float(self.max or _LEVEL_DENOM))

    def arguments(self, count: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Any]:
        args = self.level(self.magnitudes(count, generator, device), self.hparams, generator)
        resample: Any = self.resample
        if isinstance(resample, tuple):  # per image, as timm's random.choice per call
            pick = torch.randint(0, len(resample), (count,), generator=generator, device=device)
            resample = P.constant(tuple(float(r) for r in resample), device, torch.float64).long()[pick]
        return args, resample

    def __call__(self, images: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
        args, resample = self.arguments(len(images), generator, images.device)

        def apply(subset: Tensor, index: Tensor | slice) -> Tensor:
            if not self.geometric:
                return self.fn(subset, args[index])
            picked = resample[index] if isinstance(resample, Tensor) else resample
            return self.fn(subset, args[index], picked, self.fill)

        return _where(mask, images, apply)


class BatchRandAugment:
    """timm's ``RandAugment``: each image picks ``num_layers`` ops (uniformly with replacement, or by
    the weights without replacement, as timm's ``np.random.choice``), each applied with its probability."""

    def __init__(self, timm_rand_augment: Any) -> None:
        self.ops = [_Op(op) for op in timm_rand_augment.ops]
        self.num_layers = int(timm_rand_augment.num_layers)
        weights = timm_rand_augment.choice_weights
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def choices(self, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """``(B, num_layers)`` op indices."""
        if self.weights is None:
            return torch.randint(0, len(self.ops), (count, self.num_layers), generator=generator, device=device)
        weights = P.constant(tuple(self.weights.tolist()), device, torch.float64).expand(count, -1)
        return torch.multinomial(weights, self.num_layers, replacement=False, generator=generator)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        chosen = self.choices(len(images), generator, images.device)
        for layer in range(self.num_layers):
            for index, op in enumerate(self.ops):
                mask = (chosen[:, layer] == index) & op.applies(len(images), generator, images.device)
                images = op(images, mask, generator)
        return images


class BatchAutoAugment:
    """timm's ``AutoAugment``: each image picks one sub-policy, whose ops apply in order with their probabilities."""

    def __init__(self, timm_auto_augment: Any) -> None:
        self.policy = [[_Op(op) for op in sub] for sub in timm_auto_augment.policy]

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        count, device = len(images), images.device
        chosen = torch.randint(0, len(self.policy), (count,), generator=generator, device=device)
        for position in range(max(map(len, self.policy))):
            for index, sub in enumerate(self.policy):
                if position < len(sub):
                    op = sub[position]
                    images = op(images, (chosen == index) & op.applies(count, generator, device), generator)
        return images


class BatchColorJitter:
    """torchvision's ``ColorJitter(brightness, contrast, saturation)`` on PIL images: per image, the three
    factors and a random order of the ops (hue is off, as in timm's recipes)."""

    def __init__(self, timm_jitter: Any) -> None:
        if timm_jitter.hue is not None:
            raise NotBatchable("color jitter with a hue range has no whole-batch version")
        self.ranges = [timm_jitter.brightness, timm_jitter.contrast, timm_jitter.saturation]
        self.ops = [P.brightness, P.contrast, P.color]

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        count, device = len(images), images.device
        order = torch.rand(count, 4, generator=generator, device=device).argsort(1)  # torch.randperm(4) per image
        factors = [None if r is None else _uniform(count, r[0], r[1], generator, device) for r in self.ranges]
        for position in range(4):
            for op_id, (op, factor) in enumerate(zip(self.ops, factors)):
                if factor is not None:
                    mask = order[:, position] == op_id
                    images = _where(mask, images, lambda x, i, op=op, f=factor: op(x, f[i]))
        return images


def _boxes(heights: Tensor, widths: Tensor, height: int, width: int, generator: torch.Generator) -> Tensor:
    """``(B, 1, H, W)`` masks of boxes of these sizes placed uniformly inside the image (``random.randint``)."""
    device = heights.device
    top = torch.floor(torch.rand(len(heights), generator=generator, device=device) * (height - heights + 1)).long()
    left = torch.floor(torch.rand(len(widths), generator=generator, device=device) * (width - widths + 1)).long()
    rows = torch.arange(height, device=device)[None] - top[:, None]  # (B, H)
    cols = torch.arange(width, device=device)[None] - left[:, None]  # (B, W)
    inside = ((rows >= 0) & (rows < heights[:, None]))[:, :, None] & ((cols >= 0) & (cols < widths[:, None]))[:, None]
    return inside[:, None]


class BatchRandomErasing:
    """timm's ``RandomErasing`` on normalised images: per image, erase with ``probability`` up to
    ``max_count`` rectangles, each from 10 attempts at an area and aspect ratio (the first that fits)."""

    def __init__(self, timm_erasing: Any) -> None:
        self.probability, self.mode = float(timm_erasing.probability), timm_erasing.mode
        self.min_area, self.max_area = float(timm_erasing.min_area), float(timm_erasing.max_area)
        self.log_aspect = timm_erasing.log_aspect_ratio
        self.min_count, self.max_count = int(timm_erasing.min_count), int(timm_erasing.max_count)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        count, _, height, width = images.shape
        device = images.device
        erase = torch.rand(count, generator=generator, device=device, dtype=torch.float64) <= self.probability
        boxes = torch.full((count,), self.min_count, device=device)
        if self.max_count > self.min_count:
            boxes = torch.randint(self.min_count, self.max_count + 1, (count,), generator=generator, device=device)
        for k in range(self.max_count):
            target = _uniform(count * 10, self.min_area, self.max_area, generator, device).view(count, 10)
            target = target * (height * width) / boxes[:, None]
            aspect = torch.exp(_uniform(count * 10, *self.log_aspect, generator, device)).view(count, 10)
            h, w = torch.round(torch.sqrt(target * aspect)).long(), torch.round(torch.sqrt(target / aspect)).long()
            fits = (w < width) & (h < height)  # (B, 10)
            first = fits.long().argmax(1, keepdim=True)  # the first attempt that fits
            h, w = h.gather(1, first).squeeze(1).clamp(max=height), w.gather(1, first).squeeze(1).clamp(max=width)
            mask = _boxes(h, w, height, width, generator) & (erase & (k < boxes) & fits.any(1))[:, None, None, None]
            images = torch.where(mask, self._fill(images, generator), images)
        return images

    def _fill(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if self.mode == "pixel":
            return torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        if self.mode == "rand":
            shape = (*images.shape[:2], 1, 1)
            return torch.randn(shape, generator=generator, device=images.device, dtype=images.dtype)
        return torch.zeros((), device=images.device, dtype=images.dtype)


class BatchCutout:
    """Cutout (DeVries & Taylor 2017): a ``side`` x ``side`` square of zeros (the mean colour after
    normalising) placed uniformly inside every image, as ``RandomErasing(p=1, value=0)`` with that square."""

    def __init__(self, side: int) -> None:
        self.side = side

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        count, _, height, width = images.shape
        side = torch.full((count,), self.side, device=images.device)
        return images.masked_fill(_boxes(side, side, height, width, generator), 0.0)
