"""Every augmentation technique (``research.data.techniques.TECHNIQUES``, plugins' included) on both
paths, as every model takes a training step: a new technique is covered without a test of its own.

Each technique is switched on from the ``none`` recipe at 32 px by one of its own ``aug:`` keys, set to
a value of its type (a choice of its ``Literal``, ``True``, 0.5, 2, or a value a shipped recipe or
experiment file gives that key). Switched on, it names itself in the recipe's techniques; a technique
of the ``crop``/``pixels``/``tensor`` stages changes the images on the per-image path, and on the
batched path (the same draws) or names itself as per-image only; a ``batch`` or ``sampler`` technique
leaves the transforms alone (it mixes batches in the loop, or repeats images in the sampler).
"""

from __future__ import annotations

import random
import types
import typing
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from research.data.augment import Recipe
from research.data.techniques import TECHNIQUES, Context, Technique
from research.registry import AUGMENTATIONS

SIZE, BATCH, SEEDS = 32, 16, 8
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def build(**knobs: Any) -> Recipe:
    return AUGMENTATIONS.build("none", img_size=SIZE, simple_crop=True, **knobs)


def _tags(recipe: Recipe, kind: type[Technique]) -> tuple[str, ...]:
    ctx = Context(SIZE, (0.5,) * 3, (0.5,) * 3, recipe.parts)
    return tuple(recipe.part(kind).tags(ctx))


def _seen_values(key: str) -> list[Any]:
    """The values the shipped recipes' defaults and experiment files give ``key`` (``aug.<key>``)."""
    values = [AUGMENTATIONS.signature(name).parameters[key].default for name in AUGMENTATIONS.names()]

    def walk(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            for name, value in node.items():
                if str(name) in (key, f"aug.{key}"):
                    yield value
                yield from walk(value)

    for path in sorted(EXPERIMENTS.rglob("*.yaml")):
        values += walk(yaml.safe_load(path.read_text()))
    return values


def candidates(kind: type[Technique]) -> Iterator[dict[str, Any]]:
    """Settings of one of ``kind``'s keys, by its type, then the values the repository gives it."""
    hints = typing.get_type_hints(kind, include_extras=True)
    for field in fields(kind):
        hint = hints[field.name]
        while typing.get_origin(hint) in (typing.Annotated, typing.Union, types.UnionType):  # Optional, X | None
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        if typing.get_origin(hint) is typing.Literal:
            values: list[Any] = list(typing.get_args(hint))
        else:
            values = {bool: [True], float: [0.5], int: [2]}.get(hint, [])
        for value in [*values, *_seen_values(field.name)]:
            if value != field.default and value is not None:
                yield {field.name: value}


def switched_on(kind: type[Technique]) -> dict[str, Any]:
    """The first setting of one of ``kind``'s keys that is valid and turns it on (``{}``: on already)."""
    if _tags(build(), kind):
        return {}
    for setting in candidates(kind):
        try:
            recipe = build(**setting)
        except ValueError:  # AugError: that value is not valid alone
            continue
        if _tags(recipe, kind):
            return setting
    raise AssertionError(f"no single aug key of {kind.__name__} turns it on from the 'none' recipe")


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def per_image(recipe: Recipe) -> torch.Tensor:
    outputs = []
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        outputs.append(recipe.train_transform(image(seed)))
    return torch.stack(outputs)


def batched(recipe: Recipe) -> torch.Tensor:
    batch = recipe.batch_transform
    assert batch is not None
    pixels = torch.randint(0, 256, (BATCH, SIZE, SIZE, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    params = batch.sample(BATCH, SIZE, SIZE, torch.Generator().manual_seed(1))
    return batch.apply(pixels, params, torch.Generator().manual_seed(2))


@pytest.mark.parametrize("kind", TECHNIQUES, ids=lambda kind: kind.__name__)
def test_every_technique_is_an_aug_key_of_every_recipe(kind: type[Technique]) -> None:
    """Its keys are checked from YAML like the built-ins' (the recipes' signatures are the schema)."""
    for name in AUGMENTATIONS.names():
        assert {field.name for field in fields(kind)} <= set(AUGMENTATIONS.signature(name).parameters), name


@pytest.mark.parametrize("kind", TECHNIQUES, ids=lambda kind: kind.__name__)
def test_every_technique_runs_on_both_paths(kind: type[Technique]) -> None:
    setting = switched_on(kind)
    recipe, off = build(**setting), build()
    assert set(_tags(recipe, kind)) <= set(recipe.techniques())  # it names itself (run tags, W&B)
    images = per_image(recipe)
    assert images.shape == (SEEDS, 3, SIZE, SIZE) and images.isfinite().all()
    if recipe.batch_transform is None:  # per-image only: it says so, naming itself
        assert any(tag in reason for tag in _tags(recipe, kind) for reason in recipe.per_image_techniques())
    else:
        out = batched(recipe)
        assert out.shape == (BATCH, 3, SIZE, SIZE) and out.dtype == torch.float32 and out.isfinite().all()
    if kind.stage in ("batch", "sampler"):  # mixed in the loop, or repeated by the sampler: not a transform
        assert torch.equal(images, per_image(off)) and torch.equal(batched(recipe), batched(off))
        assert recipe.mixup_active or recipe.repeats > 1
    elif setting:  # switched on here: it changes the images on each path it runs on
        assert not torch.equal(images, per_image(off)), f"{setting} changes no image on the per-image path"
        if recipe.batch_transform is not None:
            assert not torch.equal(batched(recipe), batched(off)), f"{setting} changes no image on the batched path"
