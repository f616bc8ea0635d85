"""Augmentation recipes registered in :data:`research.registry.AUGMENTATIONS`.

A recipe is everything DeiT changes about the data for training (paper, section 6 and Table 8): the
per-image train transform (random-resized crop, flip, RandAugment or AutoAugment, random erasing), the
batch-level mix (Mixup, CutMix) and repeated augmentation in the sampler. Each technique is a knob of
its own so an ablation switches exactly one thing off.

Each technique is a small typed object of :mod:`research.data.techniques` whose fields are its
``aug:`` keys. Builders have the signature ``(*, img_size, <knobs>)``, made from the registered
techniques' fields by :class:`RecipeBuilder` (the engine passes ``img_size``; the knobs default to the
recipe's values, here the paper's :data:`DEIT`). A :class:`Recipe` runs its techniques two ways:
``train_transform`` per image (timm's PIL transforms) and ``batch_transform`` on whole batches on the
training device (``loader.batch_augment``). Building a :class:`Recipe` validates the knobs and makes no
transform until one is used, so the config loader's check of it is not a second build;
:func:`check_policy` validates the policy strings alone.

The per-image transforms are the ones ``timm.data.create_transform`` makes, as in the reference code;
only the crop of the 32x32 variant is swapped, as the reference does for ``input_size == 32``.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.transforms_factory import DEFAULT_CROP_PCT
from torchvision import transforms as T

from research.data.batch_augment import BatchRecipe
from research.data.mix import SplitMixup
from research.data.techniques import (
    TECHNIQUES,
    AugError,
    Context,
    Crop,
    Mixup,
    NotBatchable,
    RepeatedAug,
    check_policy,
    knob_hints,
)
from research.registry import AUGMENTATIONS

__all__ = ["DEIT", "AugError", "Recipe", "RecipeBuilder", "build_recipe", "check_policy", "eval_transform", "recipe", "deit", "cifar", "none"]


@dataclass(frozen=True)
class Recipe:
    """What a recipe does to the training data; built by the ``AUGMENTATIONS`` builders, each transform
    when first used (see the module docstring).

    Attributes:
        name: The registered recipe name.
        ctx: The image size, the normalisation and the techniques, one object each, in pipeline order
            (:mod:`research.data.techniques`).
    """

    name: str
    ctx: Context

    @property
    def img_size(self) -> int:
        """Model input size the transforms produce."""
        return self.ctx.img_size

    def part(self, kind: type[Any]) -> Any:
        return self.ctx.get(kind)

    @functools.cached_property
    def train_transform(self) -> Callable[[Any], Any]:
        """PIL image -> normalised ``(3, img_size, img_size)`` tensor, random: crop and flip, policy and
        colour (PIL), tensor and normalise, erasing."""
        ctx = self.ctx
        stage = {kind: [t for part in ctx.techniques if part.stage == kind for t in part.image_transforms(ctx)] for kind in ("crop", "pixels", "tensor")}
        normalise = [T.ToTensor(), T.Normalize(ctx.mean, ctx.std)]
        return T.Compose([*stage["crop"], *stage["pixels"], *normalise, *stage["tensor"]])

    @functools.cached_property
    def eval_transform(self) -> Callable[[Any], Any]:
        """PIL image -> normalised ``(3, img_size, img_size)`` tensor, deterministic."""
        return eval_transform(self.img_size)

    @functools.cached_property
    def _batched(self) -> tuple[BatchRecipe | None, tuple[str, ...]]:
        """The batched path of the same techniques, or None and what has no batched version."""
        ctx = self.ctx
        ops: dict[str, list[Any]] = {"pixels": [], "tensor": []}
        unbatchable = []
        for part in ctx.techniques:
            try:
                found = part.batch_ops(ctx)
            except NotBatchable as exc:
                unbatchable.append(f"{'/'.join(part.tags(ctx))} ({exc})")
                continue
            if found:
                ops[part.stage].extend(found)
        if unbatchable:
            return None, tuple(unbatchable)
        return BatchRecipe(ctx.get(Crop).geometry(ctx), ops["pixels"], ops["tensor"]), ()

    @property
    def batch_transform(self) -> BatchRecipe | None:
        """The same techniques on whole ``uint8`` batches on the training device (``loader.batch_augment``);
        None when one that is on has no batched version (:meth:`per_image_techniques` names it)."""
        return self._batched[0]

    @property
    def repeats(self) -> int:
        """Repeated-augmentation copies of each image per epoch (1 = off), for the sampler."""
        return int(self.part(RepeatedAug).repeated_aug)

    @property
    def mixup_active(self) -> bool:
        """Whether batches are mixed; the loss must then take soft targets."""
        return bool(self.part(Mixup).active)

    def mixup(self, num_classes: int, label_smoothing: float) -> SplitMixup | None:
        """timm's batch mixer (it also smooths the mixed one-hot targets), or None when mixing is off.

        When this returns None the loss must apply ``label_smoothing`` itself.
        """
        return self.part(Mixup).build(num_classes, label_smoothing)  # type: ignore[no-any-return]

    def techniques(self) -> list[str]:
        """Names of the techniques that are on, in pipeline order, e.g. for run tags: ``["random_resized_crop", "hflip", ...]``."""
        return [tag for part in self.ctx.techniques for tag in part.tags(self.ctx)]

    def per_image_techniques(self) -> list[str]:
        """Techniques that are on and have no whole-batch version, with the reason (empty iff
        :attr:`batch_transform` is set)."""
        return list(self._batched[1])

    def check_batch_size(self, per_rank_batch: int) -> None:
        """Raise if mixing is on and the per-rank batch is odd (timm's Mixup pairs images within a batch).

        The training loader must also drop its last incomplete batch, which may be odd.
        """
        mix = self.part(Mixup)
        if mix.active and per_rank_batch % 2:
            raise ValueError(
                f"batch size per rank is {per_rank_batch}, but Mixup/CutMix (aug.mixup={mix.mixup}, "
                f"aug.cutmix={mix.cutmix}) mix image pairs and need an even batch: make it even or "
                "set aug.mixup and aug.cutmix to 0"
            )


def eval_transform(img_size: int) -> Callable[[Any], Any]:
    """The evaluation transform of the reference code.

    Above 32 pixels: bicubic resize of the short side to ``img_size / 0.875`` then a centre crop
    (256 -> 224). At 32 pixels or less, images are assumed to be ``img_size`` already (CIFAR) and are
    only converted and normalised, as the reference does for ``input_size == 32``.
    """
    if img_size > 32:
        return create_transform(img_size, is_training=False, interpolation="bicubic", crop_pct=DEFAULT_CROP_PCT)
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


def build_recipe(name: str, *, img_size: int, **knobs: Any) -> Recipe:
    """Validate the knobs and build a :class:`Recipe`; the registered recipes only choose defaults.

    Args:
        name: The recipe's name (for messages and tags).
        img_size: Model input size.
        knobs: ``aug:`` keys; those left out take the techniques' class defaults.

    Raises:
        AugError: a knob out of range or inconsistent with another, naming the ``aug.`` key.
    """
    if img_size < 1:
        raise ValueError(f"img_size must be positive, got {img_size}")
    # One object per technique, each from its own keys (missing keys: the class defaults).
    parts = tuple(kind(**{key: knobs[key] for key in knob_hints(kind) if key in knobs}) for kind in TECHNIQUES)
    ctx = Context(img_size, tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD), parts)
    for part in parts:
        part.check(ctx)
    crop = ctx.get(Crop)
    if crop.scale is None and not crop.simple_crop and img_size <= 32:
        warnings.warn(
            f"augmentation {name!r}: RandomResizedCrop on {img_size}px images crops as little as 8% of the area; "
            "the reference code swaps it for a padded random crop at 32px: set aug.simple_crop: true or use "
            "recipe 'cifar'",
            stacklevel=3,
        )
    return Recipe(name, ctx)


class RecipeBuilder:
    """A registered recipe: ``(*, img_size, <every technique's knobs>) -> Recipe``, with its own defaults.

    The signature is made from the registered techniques' fields (annotations and bounds included) when
    asked, so the config loader checks ``aug:`` keys, types, choices and bounds against it, every recipe
    takes the same keys, and a technique a plugin registers later adds its keys to every recipe. A
    builder equals another only as of the same techniques, so a cache keyed by it sees new keys.
    """

    def __init__(self, name: str, doc: str, defaults: dict[str, Any]) -> None:
        self.__name__ = self.__qualname__ = name
        self.__doc__ = doc
        self.defaults = defaults

    @property
    def __signature__(self) -> inspect.Signature:
        params = [inspect.Parameter("img_size", inspect.Parameter.KEYWORD_ONLY, annotation=int)]
        for kind in TECHNIQUES:
            for field in fields(kind):
                default = self.defaults.get(field.name, field.default)
                params.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=knob_hints(kind)[field.name]))
        if unknown := set(self.defaults) - {param.name for param in params}:
            raise TypeError(f"recipe {self.__name__!r}: no technique has the keys {sorted(unknown)}")
        return inspect.Signature(params, return_annotation=Recipe)

    @property
    def __annotations__(self) -> dict[str, Any]:  # type: ignore[override]  # read by typing.get_type_hints
        signature = self.__signature__
        return {**{key: param.annotation for key, param in signature.parameters.items()}, "return": Recipe}

    def __call__(self, *, img_size: int, **knobs: Any) -> Recipe:
        bound = self.__signature__.bind(img_size=img_size, **knobs)  # an unknown knob is a TypeError, as for a def
        bound.apply_defaults()
        return build_recipe(self.__name__, **bound.arguments)

    def _key(self) -> tuple[Any, ...]:
        return self.__name__, tuple(TECHNIQUES)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecipeBuilder) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def recipe(name: str, doc: str, **defaults: Any) -> RecipeBuilder:
    """Register recipe ``name``: a builder ``(*, img_size, <every technique's knobs>)`` with these defaults."""
    builder = RecipeBuilder(name, doc, defaults)
    builder.__signature__  # noqa: B018  (a default no technique takes raises here, at registration)
    return AUGMENTATIONS.register(name)(builder)  # type: ignore[return-value]


#: The paper's augmentation values (Table 9 and section 6; the reference main.py's defaults), stated once:
#: the ``deit`` and ``cifar`` recipes' defaults, quoted by docs/RECIPES.md (tests/data/test_augment.py).
DEIT = dict(rand_augment="rand-m9-mstd0.5-inc1", color_jitter=0.3, random_erasing=0.25, mixup=0.8, cutmix=1.0, repeated_aug=3)

deit = recipe(
    "deit",
    """The paper's full training recipe (Table 8 / section 6; defaults of the reference ``main.py``):
    RandAugment m9 mstd0.5, random erasing 0.25 (pixel mode), Mixup 0.8, CutMix 1.0, repeated
    augmentation x3, RandomResizedCrop and flip. Color jitter 0.3 is set but, as in timm, inert while
    a policy is on. The knobs are the fields of :mod:`research.data.techniques`.""",
    **DEIT,
)

cifar = recipe(
    "cifar",
    """The DeiT recipe at 32x32: every technique of ``deit``, with a padded random crop.

    This is what the reference code runs for ``input_size 32``; RandAugment's translation scales with
    ``img_size`` in timm.""",
    **DEIT,
    simple_crop=True,
)

none = recipe(
    "none",
    """No augmentation beyond the crop and flip every ImageNet recipe has; the ablation baseline.

    At 32px set ``simple_crop: true`` to compare against ``cifar`` with only the techniques differing.""",
)
