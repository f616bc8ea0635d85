"""timm's random per-image techniques on whole batches: every image draws its own ops and magnitudes.

Each op here is built from the very objects timm's per-image path uses (its ``RandAugment`` and
``AutoAugment`` ops, probabilities, magnitudes and hparams; torchvision's ``ColorJitter`` ranges;
timm's ``RandomErasing`` settings), so both paths read one configuration, and runs in two steps:

- ``draw(count, size, generator, device) -> params``: every random number of a batch (or of an
  epoch's images at once), as tensors on the device, following timm's draws in distribution
  (tests/data/test_batch_ops.py: chi-square and Kolmogorov-Smirnov tests against timm's own);
- ``apply(images, params) -> images``: a pure function of the ``(B, 3, H, W)`` pixels and those
  tensors, with no generator, no host sync and no Python branch on a tensor's value, so that
  ``torch.compile`` traces it as one graph (tests/data/test_augment_compile.py).

A RandAugment / AutoAugment layer applies only what each image drew, at a cost that does not grow
with the number of ops: the geometric ops (rotate, shear, translate) are one per-image affine matrix
and one resample (the identity matrix for images that drew a colour op), the blends (brightness,
contrast, colour, sharpness) are one blend against a per-image degenerate image, and the point ops
(posterize, solarize, solarize-add, invert, autocontrast, equalize) one per-image lookup table; each
is the identity for an image that drew something else (:mod:`research.data.batch_policy`). The
pixel work is :mod:`pil_ops`, Pillow's.
On a device, or compiled, each runs on the whole batch; in eager on the CPU, on the images it
changes only (same pixels; :func:`whole_batches` turns that off, as bench/launches.py does).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from research.data import pil_ops as P
from research.data.batch_policy import OPS, NotBatchable, Params, Policy, whole_batches

__all__ = [
    "BatchAutoAugment", "BatchColorJitter", "BatchGrayscale", "BatchOp", "BatchRandAugment", "BatchRandomErasing",
    "NotBatchable", "OPS", "Params", "whole_batches",
]  # fmt: skip


class BatchOp(Protocol):
    """A batched technique: draw a batch's parameters, then apply them (a pure function)."""

    def draw(self, count: int, size: tuple[int, int], generator: torch.Generator, device: torch.device) -> Params: ...

    def apply(self, images: Tensor, params: Params) -> Tensor: ...


# A technique may also have ``noise(count, size, generator, device) -> Params``: draws too large to
# keep for an epoch (per-pixel noise), drawn per batch and merged into its params (BatchRecipe.add_noise).


class BatchRandAugment:
    """timm's ``RandAugment``: each image picks ``num_layers`` ops (uniformly with replacement, or by
    the weights without replacement, as timm's ``np.random.choice``), each applied with its probability."""

    def __init__(self, timm_rand_augment: Any) -> None:
        self.policy = Policy(timm_rand_augment.ops)
        self.num_layers = int(timm_rand_augment.num_layers)
        weights = timm_rand_augment.choice_weights
        self.weights = None if weights is None else tuple(float(w) for w in weights)

    @property
    def names(self) -> list[str]:
        return self.policy.names

    def draw(self, count: int, size: tuple[int, int], generator: torch.Generator, device: torch.device) -> Params:
        shape = (count, self.num_layers)
        if self.weights is None:
            op = torch.randint(0, len(self.names), shape, generator=generator, device=device)
        else:
            weights = P.constant(self.weights, device, torch.float64).expand(count, -1)
            op = torch.multinomial(weights, self.num_layers, replacement=False, generator=generator)
        return self.policy.draw_layers(op, None, size, generator)

    def apply(self, images: Tensor, params: Params) -> Tensor:
        return self.policy.apply(images, params)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(images, self.draw(len(images), tuple(images.shape[2:]), generator, images.device))


class BatchAutoAugment:
    """timm's ``AutoAugment``: each image picks one sub-policy, whose ops apply in order with their probabilities."""

    def __init__(self, timm_auto_augment: Any) -> None:
        subs = timm_auto_augment.policy
        self.policy = Policy([op for sub in subs for op in sub])
        self.length = max(map(len, subs))
        flat, starts = [], 0
        for sub in subs:  # (sub-policies, length) indices into the flat op list, -1 past a sub-policy's end
            flat.append([starts + i if i < len(sub) else -1 for i in range(self.length)])
            starts += len(sub)
        self._steps = tuple(float(i) for row in flat for i in row)
        self.count = len(subs)

    @property
    def names(self) -> list[str]:
        return self.policy.names

    def draw(self, count: int, size: tuple[int, int], generator: torch.Generator, device: torch.device) -> Params:
        chosen = torch.randint(0, self.count, (count,), generator=generator, device=device)
        steps = P.constant(self._steps, device, torch.float64).view(self.count, self.length).long()[chosen]  # (B, L)
        params = self.policy.draw_layers(steps.clamp(min=0), steps >= 0, size, generator)
        return {**params, "op": steps.clamp(min=0)}

    def apply(self, images: Tensor, params: Params) -> Tensor:
        return self.policy.apply(images, params)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(images, self.draw(len(images), tuple(images.shape[2:]), generator, images.device))


class BatchColorJitter:
    """torchvision's ``ColorJitter(brightness, contrast, saturation)`` on PIL images: per image, the three
    factors and a random order of the ops (hue is off, as in timm's recipes): four blends in a row."""

    def __init__(self, timm_jitter: Any) -> None:
        if timm_jitter.hue is not None:
            raise NotBatchable("color jitter with a hue range has no whole-batch version")
        self.ranges = [timm_jitter.brightness, timm_jitter.contrast, timm_jitter.saturation]

    def draw(self, count: int, size: tuple[int, int], generator: torch.Generator, device: torch.device) -> Params:
        order = torch.rand(count, 4, generator=generator, device=device).argsort(1)  # torch.randperm(4) per image
        u = torch.rand(count, 4, generator=generator, device=device, dtype=torch.float64)
        low = P.constant(tuple(1.0 if r is None else r[0] for r in self.ranges) + (1.0,), device, torch.float64)
        high = P.constant(tuple(1.0 if r is None else r[1] for r in self.ranges) + (1.0,), device, torch.float64)
        factors = torch.addcmul(low, u, high - low)  # (B, 4): brightness, contrast, saturation, hue (off: 1)
        return {"factor": factors.gather(1, order).float(), "order": order}  # per position

    def apply(self, images: Tensor, params: Params) -> Tensor:
        order = params["order"]
        for position in range(4):  # op 0 brightness (black), 1 contrast (mean grey), 2 saturation (grey)
            which = order[:, position]
            images = P.blend_degenerate(images, params["factor"][:, position], which == 2, which == 1, None)
        return images

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(images, self.draw(len(images), tuple(images.shape[2:]), generator, images.device))


class BatchGrayscale:
    """torchvision's ``RandomGrayscale(p)``: each image turned grey with probability ``p``."""

    def __init__(self, probability: float) -> None:
        self.probability = probability

    def draw(self, count: int, size: tuple[int, int], generator: torch.Generator, device: torch.device) -> Params:
        return {"grey": torch.rand(count, generator=generator, device=device) < self.probability}

    def apply(self, images: Tensor, params: Params) -> Tensor:
        return torch.where(params["grey"][:, None, None, None], P.grayscale(images), images)


class BatchRandomErasing:
    """timm's ``RandomErasing`` on normalised images: per image, erase with ``probability`` up to
    ``max_count`` rectangles, each from 10 attempts at an area and aspect ratio (the first that fits)."""

    def __init__(self, timm_erasing: Any) -> None:
        self.probability, self.mode = float(timm_erasing.probability), timm_erasing.mode
        self.min_area, self.max_area = float(timm_erasing.min_area), float(timm_erasing.max_area)
        self.log_aspect = tuple(timm_erasing.log_aspect_ratio)
        self.min_count, self.max_count = int(timm_erasing.min_count), int(timm_erasing.max_count)

    def draw(self, count: int, size: tuple[int, int], generator: torch.Generator, device: torch.device) -> Params:
        height, width = size
        k = self.max_count
        # Per box: 10 attempts at (area, log aspect), then (top, left); per image: erase or not. One call.
        u = torch.rand(count, k, 23, generator=generator, device=device, dtype=torch.float64)
        boxes: int | Tensor = self.min_count
        if self.max_count > self.min_count:
            boxes = torch.randint(self.min_count, self.max_count + 1, (count, 1, 1, 1), generator=generator, device=device)
        per_box = height * width / (boxes if isinstance(boxes, int) else 1)
        low = P.constant((self.min_area * per_box, self.log_aspect[0]), device, torch.float64)
        span = P.constant(((self.max_area - self.min_area) * per_box, self.log_aspect[1] - self.log_aspect[0]), device, torch.float64)
        attempt = torch.addcmul(low, u[..., :20].view(count, k, 10, 2), span)  # (B, K, 10, 2): target area, log aspect
        target = attempt[..., :1] if isinstance(boxes, int) else attempt[..., :1] / boxes  # (B, K, 10, 1): area per box
        # (h, w) = round(sqrt(target * aspect)), round(sqrt(target / aspect)), as timm's
        sides = (target * attempt[..., 1:].mul(P.constant((1.0, -1.0), device, torch.float64)).exp_()).sqrt_().round_()
        fits = (sides < P.constant((float(height), float(width)), device, torch.float64)).all(-1)  # (B, K, 10)
        first = fits.byte().argmax(2)[..., None, None].expand(count, k, 1, 2)  # the first attempt that fits
        sides = sides.gather(2, first).squeeze(2)  # (B, K, 2): height, width
        live = fits.any(2, keepdim=True) & (u[:, :1, 22:] <= self.probability)  # (B, K, 1)
        if isinstance(boxes, Tensor):
            live = live & (P.constant(tuple(range(k)), device, torch.long)[:, None] < boxes.view(count, 1, 1))
        # random.randint(0, side - h): the top-left corner, then the end; an empty range where nothing is erased
        start = (P.constant((height + 1.0, width + 1.0), device, torch.float64) - sides).mul_(u[..., 20:22]).floor_()
        params = {"start": start, "end": torch.where(live, start + sides, start)}  # (B, K, 2) each: rows, columns
        if self.mode == "rand":
            params["fill"] = torch.randn((count, k, 3), generator=generator, device=device)
        return params

    def noise(self, count: int, size: tuple[int, int], generator: torch.Generator, device: torch.device) -> Params:
        """Pixel mode's noise, per batch (an epoch's would not fit): one image of it per image, whose
        pixels the boxes read (overlapping boxes read other pixels of it, as fresh noise would be)."""
        if self.mode != "pixel":
            return {}
        return {"fill": torch.randn((count, 3, *size), generator=generator, device=device)}

    def apply(self, images: Tensor, params: Params) -> Tensor:
        _, _, height, width = images.shape
        side = max(height, width)
        steps = P.constant(tuple(float(i) for i in range(side)), images.device, torch.float64)  # rows and columns
        inside = (steps >= params["start"][..., None]) & (steps < params["end"][..., None])  # (B, K, 2, side)
        boxes = inside[..., 0, :height, None] & inside[..., 1, None, :width]  # (B, K, H, W)
        if self.mode == "rand":  # each box its own colour: later boxes over earlier ones
            for k in range(boxes.shape[1]):
                images = torch.where(boxes[:, k, None], params["fill"][:, k, :, None, None].to(images.dtype), images)
            return images
        fill = params["fill"].to(images.dtype) if self.mode == "pixel" else 0.0
        erased = boxes.any(1, keepdim=True) if boxes.shape[1] > 1 else boxes
        return torch.where(erased, fill, images)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        count, size, device = len(images), (images.shape[2], images.shape[3]), images.device
        return self.apply(images, self.draw(count, size, generator, device) | self.noise(count, size, generator, device))
