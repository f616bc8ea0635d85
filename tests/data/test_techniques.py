"""Every registered augmentation technique, by parametrisation over ``TECHNIQUES``: a technique added to
the package is covered here without a test of its own (its ``example`` says how to turn it on)."""

from __future__ import annotations

import pytest

from research.data.techniques import TECHNIQUES, Technique, knob_hints
from research.registry import AUGMENTATIONS, OneOf, constraints

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


def _out_of_bounds(kind: type[Technique]) -> list:
    cases = []
    for key, hint in knob_hints(kind).items():
        for marker in constraints(hint)[1]:
            if isinstance(marker, OneOf):
                cases.append(pytest.param(kind, key, "no-such-choice", id=f"{key}=no-such-choice"))
                continue
            values = [marker.ge - 1] if marker.ge is not None else [marker.gt] if marker.gt is not None else []
            values += [marker.le + 1] if marker.le is not None else [marker.lt] if marker.lt is not None else []
            cases += [pytest.param(kind, key, value, id=f"{key}={value}") for value in values]
    return cases


@pytest.mark.parametrize(("kind", "key", "value"), [case for kind in TECHNIQUES for case in _out_of_bounds(kind)])
def test_a_value_out_of_its_bounds_or_choices_is_refused_naming_the_key(kind: type[Technique], key: str, value) -> None:
    with pytest.raises(ValueError, match=rf"aug\.{key}\b"):
        AUGMENTATIONS.build("none", img_size=32, **{**BASE, **kind.example, key: value})
