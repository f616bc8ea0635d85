"""Augmentation recipes registered in :data:`research.registry.AUGMENTATIONS`.

A recipe is everything DeiT changes about the data for training (paper, section 6 and Table 8): the
per-image train transform (random-resized crop, flip, RandAugment or AutoAugment, random erasing), the
batch-level mix (Mixup, CutMix) and repeated augmentation in the sampler. Each technique is a knob of
its own so an ablation switches exactly one thing off.

Builders have the signature ``(*, img_size, <knobs>)``: the engine passes ``img_size``; the knobs are
the experiment's ``aug:`` keys, defaulting to the recipe's values. Building a :class:`Recipe` is cheap
(a few ms, no data touched: Mixup is only created by :meth:`Recipe.mixup`), so the config loader can
build one just to validate the knobs; :func:`check_policy` validates the policy strings alone.

The transforms come from ``timm.data.create_transform`` as in the reference code; only the crop of the
32x32 variant is swapped, as the reference does for ``input_size == 32``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Optional

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.data.auto_augment import auto_augment_transform, rand_augment_transform
from timm.data.transforms_factory import DEFAULT_CROP_PCT
from torchvision import transforms as T

from research.data.batch_augment import BatchAugment
from research.registry import AUGMENTATIONS

__all__ = ["Recipe", "build_recipe", "check_policy", "eval_transform", "deit", "cifar", "none"]

MixupMode = Literal["batch", "pair", "elem"]
ErasingMode = Literal["const", "rand", "pixel"]
Interpolation = Literal["bicubic", "bilinear", "nearest", "random"]
PaddingMode = Literal["constant", "reflect"]

_AUTO_AUGMENT_POLICIES = ("original", "originalr", "v0", "v0r", "3a")
# Sections of a RandAugment string that timm understands ("rand-m9-mstd0.5-inc1"). timm silently
# skips a section without digits ("rand-m9-mstdx") and an unknown op set ("tweight"), which would
# hide a typo in an ablation.
_RAND_SECTION = re.compile(r"^(m\d+|n\d+|p[\d.]+|mstd[\d.]+|mmax\d+|inc[01]|t(weights|3aw|3a))$")
_AUTO_SECTION = re.compile(r"^mstd[\d.]+$")


@dataclass(frozen=True)
class Recipe:
    """What a recipe does to the training data; built by the ``AUGMENTATIONS`` builders.

    Attributes:
        name: The registered recipe name.
        img_size: Model input size the transforms produce.
        train_transform: PIL image -> normalised ``(3, img_size, img_size)`` tensor, random.
        eval_transform: PIL image -> normalised ``(3, img_size, img_size)`` tensor, deterministic.
        repeats: Repeated-augmentation copies of each image per epoch (1 = off), for the sampler.
        mixup_alpha, cutmix_alpha, mixup_prob, mixup_switch_prob, mixup_mode: timm ``Mixup`` settings.
        enabled: Names of the techniques that are on, in pipeline order (see :meth:`techniques`).
        batch_transform: The same train transform on whole uint8 batches, when it is a padded crop, a
            flip and cutout only (``loader.batch_augment`` uses it); None with any other per-image
            technique (see :meth:`per_image_techniques`).
    """

    name: str
    img_size: int
    train_transform: Callable[[Any], Any]
    eval_transform: Callable[[Any], Any]
    repeats: int
    mixup_alpha: float
    cutmix_alpha: float
    mixup_prob: float
    mixup_switch_prob: float
    mixup_mode: str
    enabled: tuple[str, ...]
    batch_transform: BatchAugment | None = None

    @property
    def mixup_active(self) -> bool:
        """Whether batches are mixed; the loss must then take soft targets."""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mixup_prob > 0

    def mixup(self, num_classes: int, label_smoothing: float) -> Mixup | None:
        """timm's batch mixer (it also smooths the mixed one-hot targets), or None when mixing is off.

        When this returns None the loss must apply ``label_smoothing`` itself.
        """
        if not self.mixup_active:
            return None
        return Mixup(
            mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha,
            prob=self.mixup_prob,
            switch_prob=self.mixup_switch_prob,
            mode=self.mixup_mode,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )

    def techniques(self) -> list[str]:
        """Names of the techniques that are on, e.g. for run tags: ``["random_resized_crop", "hflip", ...]``."""
        return list(self.enabled)

    def per_image_techniques(self) -> list[str]:
        """Techniques that are on and have no whole-batch version (empty iff :attr:`batch_transform` is set)."""
        return _per_image(self.enabled)

    def check_batch_size(self, per_rank_batch: int) -> None:
        """Raise if mixing is on and the per-rank batch is odd (timm's Mixup pairs images within a batch).

        The training loader must also drop its last incomplete batch, which may be odd.
        """
        if self.mixup_active and per_rank_batch % 2:
            raise ValueError(
                f"batch size per rank is {per_rank_batch}, but Mixup/CutMix (aug.mixup={self.mixup_alpha}, "
                f"aug.cutmix={self.cutmix_alpha}) mix image pairs and need an even batch: make it even or "
                "set aug.mixup and aug.cutmix to 0"
            )


def check_policy(rand_augment: Optional[str], auto_augment: Optional[str]) -> None:
    """Validate RandAugment / AutoAugment strings the way the builder does, without building a recipe.

    Raises:
        ValueError: both set, or a string timm would reject or silently misread.
    """
    if rand_augment and auto_augment:
        raise ValueError(
            f"aug.rand_augment={rand_augment!r} and aug.auto_augment={auto_augment!r} are both set; "
            "timm applies one policy: set the other to null"
        )
    if rand_augment:
        sections = rand_augment.split("-")
        bad = [s for s in sections[1:] if not _RAND_SECTION.match(s)]
        if sections[0] != "rand" or bad:
            raise ValueError(
                f"aug.rand_augment={rand_augment!r} is not a RandAugment string: expected 'rand' then "
                "dash-separated m<magnitude>, n<ops>, p<prob>, mstd<std>, mmax<max>, inc<0|1>, t<weights|3aw|3a> "
                "(e.g. 'rand-m9-mstd0.5-inc1')"
                + (f"; bad sections: {bad}" if bad and sections[0] == "rand" else "")
            )
        _timm_accepts(rand_augment_transform, rand_augment, "aug.rand_augment")
    if auto_augment:
        sections = auto_augment.split("-")
        if sections[0] not in _AUTO_AUGMENT_POLICIES or not all(_AUTO_SECTION.match(s) for s in sections[1:]):
            hint = " (RandAugment goes in aug.rand_augment)" if auto_augment.startswith("rand") else ""
            raise ValueError(
                f"aug.auto_augment={auto_augment!r} is not an AutoAugment policy: expected one of "
                f"{', '.join(_AUTO_AUGMENT_POLICIES)}, optionally followed by -mstd<std>{hint}"
            )
        _timm_accepts(auto_augment_transform, auto_augment, "aug.auto_augment")


def _timm_accepts(factory: Callable[..., Any], config: str, key: str) -> None:
    try:
        factory(config, {})
    except Exception as exc:  # timm reports bad strings with bare asserts / KeyErrors
        raise ValueError(f"{key}={config!r} is rejected by timm: {exc!r}") from exc


def _check_probability(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"aug.{key} is a probability in [0, 1], got {value}")


def eval_transform(img_size: int) -> Callable[[Any], Any]:
    """The evaluation transform of the reference code.

    Above 32 pixels: bicubic resize of the short side to ``img_size / 0.875`` then a centre crop
    (256 -> 224). At 32 pixels or less, images are assumed to be ``img_size`` already (CIFAR) and are
    only converted and normalised, as the reference does for ``input_size == 32``.
    """
    if img_size > 32:
        return create_transform(img_size, is_training=False, interpolation="bicubic", crop_pct=DEFAULT_CROP_PCT)
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


def build_recipe(
    name: str,
    *,
    img_size: int,
    rand_augment: Optional[str],
    auto_augment: Optional[str],
    color_jitter: Optional[float],
    random_erasing: float,
    random_erasing_mode: str,
    random_erasing_count: int,
    cutout: int,
    mixup: float,
    cutmix: float,
    mixup_prob: float,
    mixup_switch_prob: float,
    mixup_mode: str,
    repeated_aug: int,
    hflip: float,
    scale: Optional[list[float]],
    simple_crop: bool,
    interpolation: str,
    crop_padding: Optional[int] = None,
    crop_padding_mode: PaddingMode = "constant",
    alternate_flip: bool = False,
) -> Recipe:
    """Validate the knobs and build a :class:`Recipe`; the registered recipes only choose defaults.

    Use it to register a recipe of your own with different defaults. See :func:`deit` for the knobs.

    Raises:
        ValueError: a knob out of range or inconsistent with another, naming the ``aug.`` key.
    """
    if img_size < 1:
        raise ValueError(f"img_size must be positive, got {img_size}")
    check_policy(rand_augment, auto_augment)
    for key, value in [("random_erasing", random_erasing), ("mixup_prob", mixup_prob),
                       ("mixup_switch_prob", mixup_switch_prob), ("hflip", hflip)]:  # fmt: skip
        _check_probability(key, value)
    for key, value in [("mixup", mixup), ("cutmix", cutmix), ("color_jitter", color_jitter or 0.0)]:
        if value < 0:
            raise ValueError(f"aug.{key} must be >= 0 (0 = off), got {value}")
    if random_erasing_mode not in ("const", "rand", "pixel"):
        raise ValueError(f"aug.random_erasing_mode must be 'const', 'rand' or 'pixel', got {random_erasing_mode!r}")
    if not 0 <= cutout <= img_size:
        raise ValueError(f"aug.cutout is the side of the erased square in pixels, 0 to img_size={img_size} (0 = off), got {cutout}")
    padding = _crop_padding(img_size, crop_padding, simple_crop)
    _check_padding_mode(crop_padding_mode, padding, img_size, simple_crop)
    if alternate_flip and hflip != 0.5:
        raise ValueError(f"aug.alternate_flip mirrors half the images each epoch: it needs aug.hflip: 0.5, got {hflip}")
    if random_erasing_count < 1:
        raise ValueError(f"aug.random_erasing_count must be >= 1, got {random_erasing_count}")
    if mixup_mode not in ("batch", "pair", "elem"):
        raise ValueError(f"aug.mixup_mode must be 'batch', 'pair' or 'elem', got {mixup_mode!r}")
    if repeated_aug < 1:
        raise ValueError(f"aug.repeated_aug is the number of copies per image (1 = off), got {repeated_aug}")
    if interpolation not in ("bicubic", "bilinear", "nearest", "random"):
        raise ValueError(f"aug.interpolation must be bicubic, bilinear, nearest or random, got {interpolation!r}")
    if scale is not None:
        if simple_crop:
            raise ValueError("aug.scale sets the RandomResizedCrop area range, unused with aug.simple_crop: true")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] or not all(map(math.isfinite, scale)):
            raise ValueError(f"aug.scale is [min, max] crop area fractions with 0 < min <= max, got {scale}")
    elif not simple_crop and img_size <= 32:
        warnings.warn(
            f"augmentation {name!r}: RandomResizedCrop on {img_size}px images crops as little as 8% of the area; "
            "the reference code swaps it for a padded random crop at 32px: set aug.simple_crop: true or use "
            "recipe 'cifar'",
            stacklevel=3,
        )

    policy = rand_augment or auto_augment
    # timm ignores color jitter whenever a policy is on (except '3a'); mirror that in the tags.
    jitter_on = bool(color_jitter) and (not policy or "3a" in policy)
    primary, secondary, final = create_transform(
        img_size,
        is_training=True,
        scale=tuple(scale) if scale else None,
        hflip=hflip,
        color_jitter=color_jitter or None,
        auto_augment=policy,
        interpolation=interpolation,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        re_prob=random_erasing,
        re_mode=random_erasing_mode,
        re_count=random_erasing_count,
        separate=True,  # (crop + flip, policy + jitter, tensor + normalise + erasing)
    )
    if simple_crop:
        # Reference datasets.py at input_size 32: RandomCrop(32, padding=4) replaces RandomResizedCrop,
        # since rescaling a 32px crop destroys most of the image. Padding: 1/8 of the side (4 at 32) by default.
        flip = [T.RandomHorizontalFlip(hflip)] if hflip > 0 else []
        primary = T.Compose([T.RandomCrop(img_size, padding=padding, padding_mode=crop_padding_mode), *flip])
    # Cutout (DeVries & Taylor 2017, Page's CIFAR ResNet-9 recipe): one fixed square, set to 0 after
    # normalising (the mean colour), placed uniformly inside the image.
    area = cutout**2 / img_size**2
    cut = [T.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=0)] if cutout else []
    train = T.Compose([*primary.transforms, *secondary.transforms, *final.transforms, *cut])

    enabled = [
        ("simple_crop" if simple_crop else "random_resized_crop", True),
        ("hflip", hflip > 0),
        ("alternate_flip", alternate_flip),
        ("rand_augment", bool(rand_augment)),
        ("auto_augment", bool(auto_augment)),
        ("color_jitter", jitter_on),
        ("random_erasing", random_erasing > 0),
        ("cutout", cutout > 0),
        ("mixup", mixup > 0 and mixup_prob > 0),
        ("cutmix", cutmix > 0 and mixup_prob > 0),
        ("repeated_aug", repeated_aug > 1),
    ]
    on = tuple(technique for technique, is_on in enabled if is_on)
    return Recipe(
        name=name,
        img_size=img_size,
        train_transform=train,
        eval_transform=eval_transform(img_size),
        repeats=repeated_aug,
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        mixup_prob=mixup_prob,
        mixup_switch_prob=mixup_switch_prob,
        mixup_mode=mixup_mode,
        enabled=on,
        batch_transform=None if _per_image(on) else _batch_transform(img_size, padding, crop_padding_mode, hflip, cutout, alternate_flip),
    )


# What BatchAugment does, and what acts on whole batches or in the sampler anyway.
_BATCHABLE = ("simple_crop", "hflip", "alternate_flip", "cutout", "mixup", "cutmix", "repeated_aug")


def _per_image(techniques: Iterable[str]) -> list[str]:
    return [technique for technique in techniques if technique not in _BATCHABLE]


def _crop_padding(img_size: int, crop_padding: Optional[int], simple_crop: bool) -> int:
    if crop_padding is None:
        return max(img_size // 8, 1)
    if not simple_crop:
        raise ValueError("aug.crop_padding sets the padded random crop's padding, unused without aug.simple_crop: true")
    if not 0 <= crop_padding <= img_size:
        raise ValueError(f"aug.crop_padding is a number of pixels, 0 to img_size={img_size}, got {crop_padding}")
    return crop_padding


def _check_padding_mode(mode: str, padding: int, img_size: int, simple_crop: bool) -> None:
    if mode not in ("constant", "reflect"):
        raise ValueError(f"aug.crop_padding_mode is 'constant' (zeros) or 'reflect', got {mode!r}")
    if mode == "reflect":
        if not simple_crop:
            raise ValueError("aug.crop_padding_mode sets the padded random crop's fill, unused without aug.simple_crop: true")
        if padding >= img_size:
            raise ValueError(f"aug.crop_padding_mode: reflect needs aug.crop_padding < img_size={img_size}, got {padding}")


def _batch_transform(
    img_size: int, padding: int, padding_mode: str, hflip: float, cutout: int, alternate_flip: bool
) -> BatchAugment:
    return BatchAugment(
        img_size,
        padding,
        hflip,
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        cutout,
        alternate_flip=alternate_flip,
        padding_mode=padding_mode,
    )


@AUGMENTATIONS.register("deit")
def deit(
    *,
    img_size: int,
    rand_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
    auto_augment: Optional[str] = None,
    color_jitter: Optional[float] = 0.3,
    random_erasing: float = 0.25,
    random_erasing_mode: ErasingMode = "pixel",
    random_erasing_count: int = 1,
    cutout: int = 0,
    mixup: float = 0.8,
    cutmix: float = 1.0,
    mixup_prob: float = 1.0,
    mixup_switch_prob: float = 0.5,
    mixup_mode: MixupMode = "batch",
    repeated_aug: int = 3,
    hflip: float = 0.5,
    scale: Optional[list[float]] = None,
    simple_crop: bool = False,
    interpolation: Interpolation = "bicubic",
    crop_padding: Optional[int] = None,
    crop_padding_mode: PaddingMode = "constant",
    alternate_flip: bool = False,
) -> Recipe:
    """The paper's full training recipe (Table 8 / section 6; defaults of the reference ``main.py``).

    Args:
        img_size: Model input size (injected by the engine).
        rand_augment: timm RandAugment string; None = off. The paper's choice over AutoAugment.
        auto_augment: timm AutoAugment policy (original, originalr, v0, v0r, 3a; optional -mstd<x>);
            None = off. Exclusive with ``rand_augment``.
        color_jitter: Brightness/contrast/saturation strength; as in timm it applies only when no
            RandAugment/AutoAugment policy is set, so at the default recipe it is inert.
        random_erasing: Probability of erasing a rectangle of each image (0 = off).
        random_erasing_mode: Fill of the erased area: per-pixel noise, per-channel noise or zeros.
        random_erasing_count: Rectangles erased per image.
        cutout: Side in pixels of one square set to 0 (the mean colour) in every image, after
            normalising; 0 = off. Not part of DeiT: the CIFAR CNN teacher's regulariser (Page).
        mixup: Mixup Beta(alpha, alpha) parameter (0 = off).
        cutmix: CutMix Beta parameter (0 = off).
        mixup_prob: Probability a batch is mixed at all.
        mixup_switch_prob: Probability of CutMix instead of Mixup when both are on.
        mixup_mode: Draw mixing parameters per batch, per pair or per element.
        repeated_aug: Copies of each image per epoch, spread over ranks (1 = off); Hoffer et al. 2020.
        hflip: Horizontal flip probability.
        scale: RandomResizedCrop area range ``[min, max]``; None = timm's ``[0.08, 1.0]``.
        simple_crop: Pad-by-img_size/8 random crop instead of RandomResizedCrop (for 32px images).
        crop_padding: The padded crop's padding in pixels (a random translation of up to that
            much); None = img_size/8, the reference code's 4 at 32px. Only with ``simple_crop``.
        crop_padding_mode: What the padding holds: ``constant`` (zeros, the reference code's) or
            ``reflect`` (the image mirrored at its border, airbench's translation). Only with ``simple_crop``.
        alternate_flip: Jordan's derandomised flip (airbench, 2024): a fixed random half of the
            images is mirrored in even epochs and the other half in odd ones, so every image is
            seen both ways every two epochs. Needs ``hflip: 0.5`` and ``loader.batch_augment``.
        interpolation: Resampling of the crop and the geometric RandAugment ops (the reference: bicubic).
    """
    return build_recipe("deit", **locals())


@AUGMENTATIONS.register("cifar")
def cifar(
    *,
    img_size: int,
    rand_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
    auto_augment: Optional[str] = None,
    color_jitter: Optional[float] = 0.3,
    random_erasing: float = 0.25,
    random_erasing_mode: ErasingMode = "pixel",
    random_erasing_count: int = 1,
    cutout: int = 0,
    mixup: float = 0.8,
    cutmix: float = 1.0,
    mixup_prob: float = 1.0,
    mixup_switch_prob: float = 0.5,
    mixup_mode: MixupMode = "batch",
    repeated_aug: int = 3,
    hflip: float = 0.5,
    scale: Optional[list[float]] = None,
    simple_crop: bool = True,
    interpolation: Interpolation = "bicubic",
    crop_padding: Optional[int] = None,
    crop_padding_mode: PaddingMode = "constant",
    alternate_flip: bool = False,
) -> Recipe:
    """The DeiT recipe at 32x32: every technique of :func:`deit`, with a padded random crop.

    This is what the reference code runs for ``input_size 32``; RandAugment's translation scales with
    ``img_size`` in timm. Knobs as in :func:`deit`.
    """
    return build_recipe("cifar", **locals())


@AUGMENTATIONS.register("none")
def none(
    *,
    img_size: int,
    rand_augment: Optional[str] = None,
    auto_augment: Optional[str] = None,
    color_jitter: Optional[float] = None,
    random_erasing: float = 0.0,
    random_erasing_mode: ErasingMode = "pixel",
    random_erasing_count: int = 1,
    cutout: int = 0,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    mixup_prob: float = 1.0,
    mixup_switch_prob: float = 0.5,
    mixup_mode: MixupMode = "batch",
    repeated_aug: int = 1,
    hflip: float = 0.5,
    scale: Optional[list[float]] = None,
    simple_crop: bool = False,
    interpolation: Interpolation = "bicubic",
    crop_padding: Optional[int] = None,
    crop_padding_mode: PaddingMode = "constant",
    alternate_flip: bool = False,
) -> Recipe:
    """No augmentation beyond the crop and flip every ImageNet recipe has; the ablation baseline.

    At 32px set ``simple_crop: true`` to compare against :func:`cifar` with only the techniques
    differing. Knobs as in :func:`deit`.
    """
    return build_recipe("none", **locals())
