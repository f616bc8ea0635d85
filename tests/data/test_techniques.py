"""Every registered augmentation technique, by parametrisation over ``TECHNIQUES``: a technique added to
the package is covered here without a test of its own (its ``example`` says how to turn it on)."""

from __future__ import annotations

import typing

import pytest
import torch
from PIL import Image

from research.data.techniques import TECHNIQUES, Technique, knob_hints
from research.registry import AUGMENTATIONS, constraints

BASE = {"simple_crop": True, "hflip": 0.0}  # crop only: what each technique's example adds is all that is on


def _on(kind: type[Technique]):
    return AUGMENTATIONS.build("none", img_size=32, **{**BASE, **kind.example})


@pytest.mark.parametrize("kind", TECHNIQUES, ids=lambda kind: kind.__name__)
def test_every_recipe_takes_its_keys_off_by_default(kind: type[Technique]) -> None:
    for name in AUGMENTATIONS.names():
        assert set(knob_hints(kind)) <= set(AUGMENTATIONS.signature(name).parameters)
    assert kind.example and set(kind.example) <= set(knob_hints(kind))
    recipe = AUGMENTATIONS.build("none", img_size=32, **BASE)
    assert set(recipe.part(kind).tags(recipe.ctx)) <= {"simple_crop"}  # off in `none`, but the crop


@pytest.mark.parametrize("kind", TECHNIQUES, ids=lambda kind: kind.__name__)
def test_its_example_turns_it_on_and_both_paths_run(kind: type[Technique]) -> None:
    recipe = _on(kind)
    tags = recipe.part(kind).tags(recipe.ctx)
    assert tags and set(tags) <= set(recipe.techniques())
    image = Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy())
    assert recipe.train_transform(image).shape == (3, 32, 32)
    if recipe.batch_transform is None:  # no batched version: the recipe says which technique, and why
        assert any(tag in reason for tag in tags for reason in recipe.per_image_techniques())
        return
    pixels = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    params = recipe.batch_transform.sample(4, 32, 32, torch.Generator().manual_seed(0))
    out = recipe.batch_transform.apply(pixels, params, torch.Generator().manual_seed(1))
    assert out.shape == (4, 3, 32, 32) and out.isfinite().all()


def _out_of_bounds(kind: type[Technique]) -> list:
    cases = []
    for key, hint in knob_hints(kind).items():
        base, bounds = constraints(hint)
        for bound in bounds:
            values = [bound.ge - 1] if bound.ge is not None else [bound.gt] if bound.gt is not None else []
            values += [bound.le + 1] if bound.le is not None else [bound.lt] if bound.lt is not None else []
            cases += [pytest.param(kind, key, value, id=f"{key}={value}") for value in values]
        if typing.get_origin(base) is typing.Literal:
            cases.append(pytest.param(kind, key, "no-such-choice", id=f"{key}=no-such-choice"))
    return cases


@pytest.mark.parametrize(("kind", "key", "value"), [case for kind in TECHNIQUES for case in _out_of_bounds(kind)])
def test_a_value_out_of_its_bounds_or_choices_is_refused_naming_the_key(kind: type[Technique], key: str, value) -> None:
    with pytest.raises(ValueError, match=rf"aug\.{key}\b"):
        AUGMENTATIONS.build("none", img_size=32, **{**BASE, **kind.example, key: value})
