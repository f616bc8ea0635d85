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
``sampler`` (repeated augmentation). A technique is one class decorated with :func:`register_technique`,
here or in a plugin module; every recipe then takes its keys (docs/EXPERIMENTS.md, "The augmentation
recipe: techniques, and adding one"). Its fields' annotations state their bounds and choices
(``Annotated[float, Range(ge=0, le=1)]``, ``Literal[...]``): the config loader checks them when an
experiment loads, and a technique built in Python checks them on construction.
"""

from __future__ import annotations

import functools
import math
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, Literal, Optional, TypeVar

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
from research.registry import Range, RegistryError, constraints

__all__ = ["AugError", "Context", "NotBatchable", "TECHNIQUES", "Technique", "check_policy", "register_technique"]

Stage = Literal["crop", "pixels", "tensor", "batch", "sampler"]
MixupMode = Literal["batch", "pair", "elem"]
ErasingMode = Literal["const", "rand", "pixel"]
Interpolation = Literal["bicubic", "bilinear", "nearest", "random"]
PaddingMode = Literal["constant", "reflect"]
Probability = Annotated[float, Range(ge=0, le=1, hint="a probability")]


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


@dataclass(frozen=True)
class Technique(ABC):
    """One technique of a recipe. Subclasses are frozen dataclasses whose fields are ``aug:`` keys."""

    stage: ClassVar[Stage]
    #: Knob values that turn it on, for the docs and for the tests parametrised over :data:`TECHNIQUES`.
    example: ClassVar[Mapping[str, Any]]

    @abstractmethod
    def tags(self, ctx: Context) -> tuple[str, ...]:
        """Names of what is on, for run tags and ``Recipe.techniques()``: each technique says its own."""

    def __post_init__(self) -> None:
        """Check each knob against its annotation (``Range`` bounds, ``Literal`` choices), as the loader does."""
        for key, hint in knob_hints(type(self)).items():
            value, (base, bounds) = getattr(self, key), constraints(hint)
            if typing.get_origin(base) is Literal and value not in typing.get_args(base):
                raise AugError(key, f"aug.{key} must be one of {', '.join(map(repr, typing.get_args(base)))}, got {value!r}")
            if problem := next(filter(None, (bound.problem(value) for bound in bounds)), None):
                raise AugError(key, f"aug.{key}={value!r}: {problem}")

    def check(self, ctx: Context) -> None:  # a hook for rules between knobs or on the image size
        """Raise :class:`AugError` naming the key of a bad knob."""
        return None

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        """The per-image path: transforms of PIL images (``crop``, ``pixels``) or tensors (``tensor``)."""
        return []

    def batch_ops(self, ctx: Context) -> list[BatchOp]:
        """The batched path: ops on ``(B, 3, H, W)`` batches (``pixels``, ``tensor``). By default a
        technique of those stages that is on has none (:class:`NotBatchable`)."""
        if self.stage in ("pixels", "tensor") and self.tags(ctx):
            raise NotBatchable(f"{type(self).__name__} has no batched version")
        return []


_T = TypeVar("_T", bound=Technique)

#: The registered technique classes, in pipeline order within each stage (the built-ins, then plugins').
TECHNIQUES: list[type[Technique]] = []


def register_technique(kind: type[_T]) -> type[_T]:
    """Class decorator: add a technique, whose fields become ``aug:`` keys of every recipe.

    A key means one thing: a field that a registered technique already has raises, naming it.
    """
    for other in TECHNIQUES:
        if (clash := set(knob_hints(kind)) & set(knob_hints(other))) or other is kind:
            raise RegistryError(
                f"technique {kind.__qualname__}: aug keys {sorted(clash)} already belong to {other.__module__}.{other.__qualname__}"
            )
    TECHNIQUES.append(kind)
    return kind


@functools.cache
def knob_hints(kind: type[Technique]) -> dict[str, Any]:
    """A technique's knobs (its fields, in order) and their annotations, ``Annotated`` bounds kept."""
    hints = typing.get_type_hints(kind, include_extras=True)
    return {field.name: hints[field.name] for field in fields(kind)}


@register_technique
@dataclass(frozen=True)
class Crop(Technique):
    """RandomResizedCrop (timm), or the reference code's padded random crop at 32px (``simple_crop``)."""

    stage: ClassVar[Stage] = "crop"
    example: ClassVar[Mapping[str, Any]] = {"crop_padding": 2}
    scale: Optional[list[float]] = None
    simple_crop: bool = False
    interpolation: Interpolation = "bicubic"
    crop_padding: Annotated[Optional[int], Range(ge=0, hint="pixels")] = None
    crop_padding_mode: PaddingMode = "constant"

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("simple_crop" if self.simple_crop else "random_resized_crop",)

    def padding(self, img_size: int) -> int:
        return max(img_size // 8, 1) if self.crop_padding is None else self.crop_padding

    def check(self, ctx: Context) -> None:
        size = ctx.img_size
        if self.crop_padding is not None:
            if not self.simple_crop:
                raise AugError("crop_padding", "aug.crop_padding sets the padded random crop's padding, unused without aug.simple_crop: true")
            if self.crop_padding > size:
                raise AugError("crop_padding", f"aug.crop_padding is a number of pixels, 0 to img_size={size}, got {self.crop_padding}")
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


@register_technique
@dataclass(frozen=True)
class Flip(Technique):
    """Horizontal flip; ``alternate_flip`` is airbench's derandomised flip (needs ``loader.batch_augment``).
    Batched, the mirror is part of the crop's gather (:meth:`Crop.geometry`)."""

    stage: ClassVar[Stage] = "crop"
    example: ClassVar[Mapping[str, Any]] = {"hflip": 0.5}
    hflip: Probability = 0.5
    alternate_flip: bool = False

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return (("hflip",) if self.hflip > 0 else ()) + (("alternate_flip",) if self.alternate_flip else ())

    def check(self, ctx: Context) -> None:
        if self.alternate_flip and self.hflip != 0.5:
            raise AugError("alternate_flip", f"aug.alternate_flip mirrors half the images each epoch: it needs aug.hflip: 0.5, got {self.hflip}")

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        return [T.RandomHorizontalFlip(self.hflip)] if self.hflip > 0 else []


class _Policy(Technique):
    """A timm policy named by a string (the field :attr:`key`): timm's own transform per image, and
    :attr:`batched` made from that transform on batches."""

    stage: ClassVar[Stage] = "pixels"
    key: ClassVar[str]
    make: ClassVar[Any]  # timm's factory: (policy string, hparams) -> transform
    batched: ClassVar[Any]  # (timm's transform) -> BatchOp

    @property
    def policy(self) -> str | None:
        return getattr(self, self.key)  # type: ignore[no-any-return]

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return (self.key,) if self.policy else ()

    def timm(self, ctx: Context) -> Any:
        """timm's transform, with the ``aa_params`` timm's ``create_transform`` gives RandAugment / AutoAugment."""
        hparams: dict[str, Any] = {
            "translate_const": int(ctx.img_size * 0.45),
            "img_mean": tuple(min(255, round(255 * x)) for x in ctx.mean),
        }
        interpolation = ctx.get(Crop).interpolation
        if interpolation != "random":
            hparams["interpolation"] = str_to_pil_interp(interpolation)
        return self.make(self.policy, hparams)

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        return [self.timm(ctx)] if self.policy else []

    def batch_ops(self, ctx: Context) -> list[BatchOp]:
        if not self.policy:
            return []
        try:
            return [self.batched(self.timm(ctx))]
        except NotBatchable as exc:
            raise NotBatchable(f"aug.{self.key}={self.policy!r}: {exc}") from None


@register_technique
@dataclass(frozen=True)
class RandAugment(_Policy):
    """timm's RandAugment string (``rand-m9-mstd0.5-inc1``); the paper's choice over AutoAugment."""

    key, make, batched = "rand_augment", staticmethod(rand_augment_transform), BatchRandAugment
    example: ClassVar[Mapping[str, Any]] = {"rand_augment": "rand-m9-mstd0.5-inc1"}
    rand_augment: Optional[str] = None

    def check(self, ctx: Context) -> None:
        check_policy(self.rand_augment, ctx.get(AutoAugment).auto_augment)


@register_technique
@dataclass(frozen=True)
class AutoAugment(_Policy):
    """timm's AutoAugment policy (original, originalr, v0, v0r, 3a; optional -mstd<x>)."""

    key, make, batched = "auto_augment", staticmethod(auto_augment_transform), BatchAutoAugment
    example: ClassVar[Mapping[str, Any]] = {"auto_augment": "original"}
    auto_augment: Optional[str] = None


@register_technique
@dataclass(frozen=True)
class ColorJitter(Technique):
    """Brightness, contrast and saturation jitter; as in timm, only when no policy is on (or '3a')."""

    stage: ClassVar[Stage] = "pixels"
    example: ClassVar[Mapping[str, Any]] = {"color_jitter": 0.4}
    color_jitter: Annotated[Optional[float], Range(ge=0, hint="0 = off")] = None

    def on(self, ctx: Context) -> bool:
        policy = ctx.policy
        return bool(self.color_jitter) and (not policy or "3a" in policy)

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("color_jitter",) if self.on(ctx) else ()

    def timm(self) -> T.ColorJitter:
        return T.ColorJitter(*(float(self.color_jitter or 0.0),) * 3)

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        return [self.timm()] if self.on(ctx) else []

    def batch_ops(self, ctx: Context) -> list[BatchOp]:
        return [BatchColorJitter(self.timm())] if self.on(ctx) else []


@register_technique
@dataclass(frozen=True)
class Grayscale(Technique):
    """Random grayscale (torchvision's ``RandomGrayscale``, timm's ``grayscale_prob``; part of DeiT III's
    3-Augment): each image turned grey with this probability, after the colour jitter."""

    stage: ClassVar[Stage] = "pixels"
    example: ClassVar[Mapping[str, Any]] = {"grayscale": 0.5}
    grayscale: Probability = 0.0

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("grayscale",) if self.grayscale > 0 else ()

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        return [T.RandomGrayscale(self.grayscale)] if self.grayscale > 0 else []

    def batch_ops(self, ctx: Context) -> list[BatchOp]:
        return [BatchGrayscale(self.grayscale)] if self.grayscale > 0 else []


@register_technique
@dataclass(frozen=True)
class RandomErasing(Technique):
    """timm's RandomErasing (Zhong et al. 2020) on normalised images."""

    stage: ClassVar[Stage] = "tensor"
    example: ClassVar[Mapping[str, Any]] = {"random_erasing": 0.5}
    random_erasing: Probability = 0.0
    random_erasing_mode: ErasingMode = "pixel"
    random_erasing_count: Annotated[int, Range(ge=1, hint="boxes per image")] = 1

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("random_erasing",) if self.random_erasing > 0 else ()

    def timm(self) -> TimmRandomErasing:
        return TimmRandomErasing(self.random_erasing, mode=self.random_erasing_mode, max_count=self.random_erasing_count, device="cpu")

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        return [self.timm()] if self.random_erasing > 0 else []

    def batch_ops(self, ctx: Context) -> list[BatchOp]:
        return [BatchRandomErasing(self.timm())] if self.random_erasing > 0 else []


@register_technique
@dataclass(frozen=True)
class Cutout(Technique):
    """Cutout (DeVries & Taylor 2017, Page's CIFAR ResNet-9): one fixed square set to 0 (the mean colour)
    after normalising, placed uniformly inside the image. Batched, its squares are drawn with the crops."""

    stage: ClassVar[Stage] = "tensor"
    example: ClassVar[Mapping[str, Any]] = {"cutout": 8}
    cutout: Annotated[int, Range(ge=0, hint="pixels; 0 = off")] = 0

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("cutout",) if self.cutout > 0 else ()

    def check(self, ctx: Context) -> None:
        if self.cutout > ctx.img_size:
            raise AugError("cutout", f"aug.cutout is the side of the erased square in pixels, 0 to img_size={ctx.img_size} (0 = off), got {self.cutout}")

    def image_transforms(self, ctx: Context) -> list[Callable[[Any], Any]]:
        area = self.cutout**2 / ctx.img_size**2
        return [T.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=0)] if self.cutout else []

    def batch_ops(self, ctx: Context) -> list[BatchOp]:
        return []  # its squares are drawn with the crops (Crop.geometry)


@register_technique
@dataclass(frozen=True)
class Mixup(Technique):
    """timm's Mixup / CutMix on batches in the training loop (both paths: it is a batch technique)."""

    stage: ClassVar[Stage] = "batch"
    example: ClassVar[Mapping[str, Any]] = {"mixup": 0.8, "cutmix": 1.0}
    mixup: Annotated[float, Range(ge=0, hint="0 = off")] = 0.0
    cutmix: Annotated[float, Range(ge=0, hint="0 = off")] = 0.0
    mixup_prob: Probability = 1.0
    mixup_switch_prob: Probability = 0.5
    mixup_mode: MixupMode = "batch"

    @property
    def active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0

    def tags(self, ctx: Context) -> tuple[str, ...]:
        alphas = {"mixup": self.mixup, "cutmix": self.cutmix}
        return tuple(name for name, alpha in alphas.items() if alpha > 0 and self.mixup_prob > 0)

    def build(self, num_classes: int, label_smoothing: float) -> SplitMixup | None:
        if not self.active:
            return None
        return SplitMixup(  # timm's, its draws apart from their application (a compiled step)
            mixup_alpha=self.mixup, cutmix_alpha=self.cutmix, prob=self.mixup_prob, switch_prob=self.mixup_switch_prob,
            mode=self.mixup_mode, label_smoothing=label_smoothing, num_classes=num_classes,
        )  # fmt: skip


@register_technique
@dataclass(frozen=True)
class RepeatedAug(Technique):
    """Repeated augmentation (Hoffer et al. 2020): copies of each image per epoch, in the sampler."""

    stage: ClassVar[Stage] = "sampler"
    example: ClassVar[Mapping[str, Any]] = {"repeated_aug": 2}
    repeated_aug: Annotated[int, Range(ge=1, hint="copies per image; 1 = off")] = 1

    def tags(self, ctx: Context) -> tuple[str, ...]:
        return ("repeated_aug",) if self.repeated_aug > 1 else ()
