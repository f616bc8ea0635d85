"""Each augmentation technique as one small typed object: its ``aug:`` keys, its checks, and how it runs.

A technique's dataclass fields are its YAML keys (``aug.rand_augment``, ``aug.random_erasing_mode``,
...); the recipe builders' signatures are made from these fields (:func:`research.data.augment.recipe`),
so a key is declared once. Every technique says where it runs (:attr:`Technique.stage`) and gives
both ways of running it:

- :meth:`Technique.image_transforms`: per image, in PIL or on one tensor (timm's own transforms, in a
  DataLoader worker or in line);
- :meth:`Technique.batch_ops`: on whole batches on the training device (``loader.batch_augment``),
  each image drawing its own parameters (:mod:`research.data.batch_ops`); a technique with no batched
  version raises :class:`NotBatchable`, naming itself.

Stages, in pipeline order: ``crop`` (crop and flip), ``pixels`` (policies and colour, on integer
pixels), ``tensor`` (after normalising), ``batch`` (mixing, in the training loop, on both paths),
``sampler`` (repeated augmentation). Adding a technique is one field group and one class here, plus
its name in :data:`TECHNIQUES` (docs/EXPERIMENTS.md, "The augmentation recipe: techniques, and adding one").
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Optional, TypeVar

from timm.data.auto_augment import auto_augment_transform, rand_augment_transform
from timm.data.random_erasing import RandomErasing as TimmRandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp
from torchvision import transforms as T

from research.data.batch_augment import BatchAugment, BatchResizedCrop
from research.data.batch_ops import (
    BatchAutoAugment,
    BatchColorJitter,
    BatchGrayscale,
    BatchOp,
    BatchRandAugment,
    BatchRandomErasing,
    NotBatchable,
)
from research.data.mix import SplitMixup
from research.data.policy import AugError, check_policy

__all__ = ["AugError", "Context", "NotBatchable", "TECHNIQUES", "Technique", "check_policy"]

Stage = Literal["crop", "pixels", "tensor", "batch", "sampler"]
MixupMode = Literal["batch", "pair", "elem"]
ErasingMode = Literal["const", "rand", "pixel"]
Interpolation = Literal["bicubic", "bilinear", "nearest", "random"]
PaddingMode = Literal["constant", "reflect"]


@dataclass(frozen=True)
class Context:
    """What techniques read besides their own knobs: the image size, the normalisation and the others."""

    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    techniques: tuple[Technique, ...]

    def get(self, kind: type[_T]) -> _T:
        return next(t for t in self.techniques if isinstance(t, kind))

    @property
    def policy(self) -> str | None:
        """The RandAugment or AutoAugment string that is on, if any."""
        return self.get(RandAugment).rand_augment or self.get(AutoAugment).auto_augment

    def timm_policy_hparams(self) -> dict[str, Any]:
        """The ``aa_params`` timm's ``create_transform`` gives RandAugment / AutoAugment."""
        hparams: dict[str, Any] = {
            "translate_const": int(self.img_size * 0.45),
            "img_mean": tuple(min(255, round(255 * x)) for x in self.mean),
        }
        interpolation = self.get(Crop).interpolation
        if interpolation != "random":
            hparams["interpolation"] = str_to_pil_interp(interpolation)
        return hparams


@dataclass(frozen=True)
class Technique(ABC):
    """One technique of a recipe. Subclasses are frozen dataclasses whose fields are ``aug:`` keys."""

    stage: ClassVar[Stage]

    @abstractmethod
    def tags(self, ctx: Context) -> tuple[str, ...]:
        """Names of what is on, for run tags and ``Recipe.techniques()``: each technique says its own."""

    def check(self, ctx: Context) -> None:  # a hook: most techniques have no knob to check
        """Raise :class:`AugError` naming the key of a bad knob."""
        return None

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        """The per-image path: transforms of PIL images (``crop``, ``pixels``) or tensors (``tensor``)."""
        return []

    def batch_ops(self, ctx: Context) -> list[BatchOp]:
        """The batched path: ops on ``(B, 3, H, W)`` batches (``pixels``, ``tensor``)."""
        return []


_T = TypeVar("_T", bound=Technique)


def _probability(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise AugError(key, f"aug.{key} is a probability in [0, 1], got {value}")


@dataclass(frozen=True)
class Crop(Technique):
    """RandomResizedCrop (timm), or the reference code's padded random crop at 32px (``simple_crop``)."""

    stage: ClassVar[Stage] = "crop"
    scale: Optional[list[float]] = None
    simple_crop: bool = False
    interpolation: Interpolation = "bicubic"
    crop_padding: Optional[int] = None
    crop_padding_mode: PaddingMode = "constant"

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("simple_crop" if self.simple_crop else "random_resized_crop",)

    def padding(self, img_size: int) -> int:
        return max(img_size // 8, 1) if self.crop_padding is None else self.crop_padding

    def check(self, ctx: Context) -> None:
        size = ctx.img_size
        if self.interpolation not in ("bicubic", "bilinear", "nearest", "random"):
            raise AugError("interpolation", f"aug.interpolation must be bicubic, bilinear, nearest or random, got {self.interpolation!r}")
        if self.crop_padding is not None:
            if not self.simple_crop:
                raise AugError("crop_padding", "aug.crop_padding sets the padded random crop's padding, unused without aug.simple_crop: true")
            if not 0 <= self.crop_padding <= size:
                raise AugError("crop_padding", f"aug.crop_padding is a number of pixels, 0 to img_size={size}, got {self.crop_padding}")
        if self.crop_padding_mode not in ("constant", "reflect"):
            raise AugError("crop_padding_mode", f"aug.crop_padding_mode is 'constant' (zeros) or 'reflect', got {self.crop_padding_mode!r}")
        if self.crop_padding_mode == "reflect":
            if not self.simple_crop:
                raise AugError("crop_padding_mode", "aug.crop_padding_mode sets the padded random crop's fill, unused without aug.simple_crop: true")
            if self.padding(size) >= size:
                raise AugError("crop_padding_mode", f"aug.crop_padding_mode: reflect needs aug.crop_padding < img_size={size}, got {self.padding(size)}")
        if self.scale is not None:
            if self.simple_crop:
                raise AugError("scale", "aug.scale sets the RandomResizedCrop area range, unused with aug.simple_crop: true")
            if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] or not all(map(math.isfinite, self.scale)):
                raise AugError("scale", f"aug.scale is [min, max] crop area fractions with 0 < min <= max, got {self.scale}")

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        if self.simple_crop:
            # Reference datasets.py at input_size 32: RandomCrop(32, padding=4) replaces RandomResizedCrop,
            # since rescaling a 32px crop destroys most of the image. Padding: img_size/8 by default.
            return [T.RandomCrop(ctx.img_size, padding=self.padding(ctx.img_size), padding_mode=self.crop_padding_mode)]
        scale = tuple(self.scale or (0.08, 1.0))  # timm's defaults, as create_transform
        return [RandomResizedCropAndInterpolation(ctx.img_size, scale=scale, ratio=(3 / 4, 4 / 3), interpolation=self.interpolation)]

    def geometry(self, ctx: Context) -> BatchAugment:
        """The batched crop, with the flip and cutout of the recipe in the same gather."""
        flip, cutout = ctx.get(Flip), ctx.get(Cutout).cutout
        if self.simple_crop:
            return BatchAugment(
                ctx.img_size, self.padding(ctx.img_size), flip.hflip, ctx.mean, ctx.std, cutout,
                alternate_flip=flip.alternate_flip, padding_mode=self.crop_padding_mode,
            )  # fmt: skip
        scale = tuple(self.scale or (0.08, 1.0))
        return BatchResizedCrop(
            ctx.img_size, scale, (3 / 4, 4 / 3), self.interpolation, flip.hflip, ctx.mean, ctx.std, cutout,
            alternate_flip=flip.alternate_flip,
        )  # fmt: skip


@dataclass(frozen=True)
class Flip(Technique):
    """Horizontal flip; ``alternate_flip`` is airbench's derandomised flip (needs ``loader.batch_augment``).
    Batched, the mirror is part of the crop's gather (:meth:`Crop.geometry`)."""

    stage: ClassVar[Stage] = "crop"
    hflip: float = 0.5
    alternate_flip: bool = False

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return (("hflip",) if self.hflip > 0 else ()) + (("alternate_flip",) if self.alternate_flip else ())

    def check(self, ctx: Context) -> None:
        _probability("hflip", self.hflip)
        if self.alternate_flip and self.hflip != 0.5:
            raise AugError("alternate_flip", f"aug.alternate_flip mirrors half the images each epoch: it needs aug.hflip: 0.5, got {self.hflip}")

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        return [T.RandomHorizontalFlip(self.hflip)] if self.hflip > 0 else []


@dataclass(frozen=True)
class RandAugment(Technique):
    """timm's RandAugment string (``rand-m9-mstd0.5-inc1``); the paper's choice over AutoAugment."""

    stage: ClassVar[Stage] = "pixels"
    rand_augment: Optional[str] = None

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("rand_augment",) if self.rand_augment else ()

    def check(self, ctx: Context) -> None:
        check_policy(self.rand_augment, ctx.get(AutoAugment).auto_augment)

    def timm(self, ctx: Context) -> Any:
        return rand_augment_transform(self.rand_augment, ctx.timm_policy_hparams())

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        return [self.timm(ctx)] if self.rand_augment else []

    def batch_ops(self, ctx: Context) -> list[BatchOp]:
        return [BatchRandAugment(self.timm(ctx))] if self.rand_augment else []


@dataclass(frozen=True)
class AutoAugment(Technique):
    """timm's AutoAugment policy (original, originalr, v0, v0r, 3a; optional -mstd<x>)."""

    stage: ClassVar[Stage] = "pixels"
    auto_augment: Optional[str] = None

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("auto_augment",) if self.auto_augment else ()

    def timm(self, ctx: Context) -> Any:
        return auto_augment_transform(self.auto_augment, ctx.timm_policy_hparams())

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        return [self.timm(ctx)] if self.auto_augment else []

    def batch_ops(self, ctx: Context) -> list[BatchOp]:
        if not self.auto_augment:
            return []
        try:
            return [BatchAutoAugment(self.timm(ctx))]
        except NotBatchable as exc:
            raise NotBatchable(f"aug.auto_augment={self.auto_augment!r}: {exc}") from None


@dataclass(frozen=True)
class ColorJitter(Technique):
    """Brightness, contrast and saturation jitter; as in timm, only when no policy is on (or '3a')."""

    stage: ClassVar[Stage] = "pixels"
    color_jitter: Optional[float] = None

    def on(self, ctx: Context) -> bool:
        policy = ctx.policy
        return bool(self.color_jitter) and (not policy or "3a" in policy)

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("color_jitter",) if self.on(ctx) else ()

    def check(self, ctx: Context) -> None:
        if (self.color_jitter or 0.0) < 0:
            raise AugError("color_jitter", f"aug.color_jitter must be >= 0 (0 = off), got {self.color_jitter}")

    def timm(self) -> T.ColorJitter:
        return T.ColorJitter(*(float(self.color_jitter or 0.0),) * 3)

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        return [self.timm()] if self.on(ctx) else []

    def batch_ops(self, ctx: Context) -> list[BatchOp]:
        return [BatchColorJitter(self.timm())] if self.on(ctx) else []


@dataclass(frozen=True)
class Grayscale(Technique):
    """Random grayscale (torchvision's ``RandomGrayscale``, timm's ``grayscale_prob``; part of DeiT III's
    3-Augment): each image turned grey with this probability, after the colour jitter."""

    stage: ClassVar[Stage] = "pixels"
    grayscale: float = 0.0

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("grayscale",) if self.grayscale > 0 else ()

    def check(self, ctx: Context) -> None:
        _probability("grayscale", self.grayscale)

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        return [T.RandomGrayscale(self.grayscale)] if self.grayscale > 0 else []

    def batch_ops(self, ctx: Context) -> list[BatchOp]:
        return [BatchGrayscale(self.grayscale)] if self.grayscale > 0 else []


@dataclass(frozen=True)
class RandomErasing(Technique):
    """timm's RandomErasing (Zhong et al. 2020) on normalised images."""

    stage: ClassVar[Stage] = "tensor"
    random_erasing: float = 0.0
    random_erasing_mode: ErasingMode = "pixel"
    random_erasing_count: int = 1

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("random_erasing",) if self.random_erasing > 0 else ()

    def check(self, ctx: Context) -> None:
        _probability("random_erasing", self.random_erasing)
        if self.random_erasing_mode not in ("const", "rand", "pixel"):
            raise AugError("random_erasing_mode", f"aug.random_erasing_mode must be 'const', 'rand' or 'pixel', got {self.random_erasing_mode!r}")
        if self.random_erasing_count < 1:
            raise AugError("random_erasing_count", f"aug.random_erasing_count must be >= 1, got {self.random_erasing_count}")

    def timm(self) -> TimmRandomErasing:
        return TimmRandomErasing(self.random_erasing, mode=self.random_erasing_mode, max_count=self.random_erasing_count, device="cpu")

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        return [self.timm()] if self.random_erasing > 0 else []

    def batch_ops(self, ctx: Context) -> list[BatchOp]:
        return [BatchRandomErasing(self.timm())] if self.random_erasing > 0 else []


@dataclass(frozen=True)
class Cutout(Technique):
    """Cutout (DeVries & Taylor 2017, Page's CIFAR ResNet-9): one fixed square set to 0 (the mean colour)
    after normalising, placed uniformly inside the image. Batched, its squares are drawn with the crops."""

    stage: ClassVar[Stage] = "tensor"
    cutout: int = 0

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("cutout",) if self.cutout > 0 else ()

    def check(self, ctx: Context) -> None:
        if not 0 <= self.cutout <= ctx.img_size:
            raise AugError("cutout", f"aug.cutout is the side of the erased square in pixels, 0 to img_size={ctx.img_size} (0 = off), got {self.cutout}")

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        area = self.cutout**2 / ctx.img_size**2
        return [T.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=0)] if self.cutout else []


@dataclass(frozen=True)
class Mixup(Technique):
    """timm's Mixup / CutMix on batches in the training loop (both paths: it is a batch technique)."""

    stage: ClassVar[Stage] = "batch"
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: MixupMode = "batch"

    @property
    def active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return (("mixup",) if self.mixup > 0 and self.mixup_prob > 0 else ()) + (
            ("cutmix",) if self.cutmix > 0 and self.mixup_prob > 0 else ()
        )

    def check(self, ctx: Context) -> None:
        _probability("mixup_prob", self.mixup_prob)
        _probability("mixup_switch_prob", self.mixup_switch_prob)
        for key in ("mixup", "cutmix"):
            if getattr(self, key) < 0:
                raise AugError(key, f"aug.{key} must be >= 0 (0 = off), got {getattr(self, key)}")
        if self.mixup_mode not in ("batch", "pair", "elem"):
            raise AugError("mixup_mode", f"aug.mixup_mode must be 'batch', 'pair' or 'elem', got {self.mixup_mode!r}")

    def build(self, num_classes: int, label_smoothing: float) -> SplitMixup | None:
        if not self.active:
            return None
        return SplitMixup(  # timm's, its draws apart from their application (a compiled step)
            mixup_alpha=self.mixup, cutmix_alpha=self.cutmix, prob=self.mixup_prob, switch_prob=self.mixup_switch_prob,
            mode=self.mixup_mode, label_smoothing=label_smoothing, num_classes=num_classes,
        )  # fmt: skip


@dataclass(frozen=True)
class RepeatedAug(Technique):
    """Repeated augmentation (Hoffer et al. 2020): copies of each image per epoch, in the sampler."""

    stage: ClassVar[Stage] = "sampler"
    repeated_aug: int = 1

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("repeated_aug",) if self.repeated_aug > 1 else ()

    def check(self, ctx: Context) -> None:
        if self.repeated_aug < 1:
            raise AugError("repeated_aug", f"aug.repeated_aug is the number of copies per image (1 = off), got {self.repeated_aug}")


# Pipeline order within each stage; a new technique goes here once.
TECHNIQUES: tuple[type[Technique], ...] = (
    Crop, Flip, RandAugment, AutoAugment, ColorJitter, Grayscale, RandomErasing, Cutout, Mixup, RepeatedAug,
)  # fmt: skip


def knobs_of(kind: type[Technique]) -> list[str]:
    return [f.name for f in fields(kind)]


def build_techniques(knobs: Mapping[str, Any]) -> tuple[Technique, ...]:
    """One object per technique, each from its own keys of ``knobs`` (missing keys: class defaults)."""
    return tuple(kind(**{key: knobs[key] for key in knobs_of(kind) if key in knobs}) for kind in TECHNIQUES)
