"""Augmentation recipes: paper defaults, one switch per technique, validation, transform outputs."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import AugmentOp

from research.data import Recipe, check_policy
from research.data.augment import DEIT
from research.registry import AUGMENTATIONS

ALL_ON = ["random_resized_crop", "hflip", "rand_augment", "random_erasing", "mixup", "cutmix", "repeated_aug"]


def _image(size: int = 32, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_registered_recipes_and_signatures():
    assert {"deit", "cifar", "none"} <= set(AUGMENTATIONS.names())
    for name in ("deit", "cifar", "none"):
        params = AUGMENTATIONS.signature(name).parameters
        assert "img_size" in params and params["img_size"].default is params["img_size"].empty
        assert all(p.kind is p.KEYWORD_ONLY for p in params.values())
        assert all(p.default is not p.empty for key, p in params.items() if key != "img_size"), name
        assert list(params) == list(AUGMENTATIONS.signature("deit").parameters)  # same YAML keys everywhere


def test_deit_defaults_are_the_papers():
    """Table 8 / reference main.py: RandAugment m9 mstd0.5, erasing 0.25, Mixup 0.8, CutMix 1.0, RA x3."""
    defaults = {k: p.default for k, p in AUGMENTATIONS.signature("deit").parameters.items()}
    assert defaults["rand_augment"] == "rand-m9-mstd0.5-inc1" and defaults["auto_augment"] is None
    assert defaults["random_erasing"] == 0.25 and defaults["random_erasing_mode"] == "pixel"
    assert (defaults["mixup"], defaults["cutmix"], defaults["mixup_prob"], defaults["mixup_switch_prob"]) == (
        0.8, 1.0, 1.0, 0.5,
    )  # fmt: skip
    assert defaults["repeated_aug"] == 3 and defaults["color_jitter"] == 0.3
    recipe = AUGMENTATIONS.build("deit", img_size=224)
    assert isinstance(recipe, Recipe) and recipe.techniques() == ALL_ON
    assert recipe.mixup_active and recipe.repeats == 3


def test_none_and_cifar_recipes():
    assert AUGMENTATIONS.build("none", img_size=224).techniques() == ["random_resized_crop", "hflip"]
    none = AUGMENTATIONS.build("none", img_size=32, simple_crop=True)
    assert none.techniques() == ["simple_crop", "hflip"] and not none.mixup_active and none.repeats == 1
    assert none.mixup(num_classes=10, label_smoothing=0.1) is None
    cifar = AUGMENTATIONS.build("cifar", img_size=32)
    assert cifar.techniques() == ["simple_crop", *ALL_ON[1:]]


@pytest.mark.parametrize(
    ("knob", "value", "technique"),
    [
        ("rand_augment", None, "rand_augment"),
        ("random_erasing", 0.0, "random_erasing"),
        ("mixup", 0.0, "mixup"),
        ("cutmix", 0.0, "cutmix"),
        ("repeated_aug", 1, "repeated_aug"),
        ("hflip", 0.0, "hflip"),
    ],
)
def test_each_technique_switches_off_alone(knob: str, value, technique: str):
    recipe = AUGMENTATIONS.build("deit", img_size=224, **{knob: value})
    expected = [t for t in ALL_ON if t != technique]
    if knob == "rand_augment":  # timm (so the reference's ablation too) then applies the color jitter
        expected.insert(2, "color_jitter")
        no_jitter = AUGMENTATIONS.build("deit", img_size=224, rand_augment=None, color_jitter=None)
        assert no_jitter.techniques() == [t for t in ALL_ON if t != technique]
    assert recipe.techniques() == expected


def test_mixing_off_only_when_both_off():
    assert AUGMENTATIONS.build("deit", img_size=224, mixup=0.0).mixup_active
    assert AUGMENTATIONS.build("deit", img_size=224, cutmix=0.0).mixup_active
    assert not AUGMENTATIONS.build("deit", img_size=224, mixup=0.0, cutmix=0.0).mixup_active
    assert not AUGMENTATIONS.build("deit", img_size=224, mixup_prob=0.0).mixup_active


def test_color_jitter_only_without_policy():
    """As in timm (and so the reference), color jitter is dropped when RandAugment/AutoAugment is on."""
    with_policy = AUGMENTATIONS.build("deit", img_size=224)
    without = AUGMENTATIONS.build("deit", img_size=224, rand_augment=None)
    assert "color_jitter" not in with_policy.techniques() and "color_jitter" in without.techniques()
    assert "ColorJitter" not in repr(with_policy.train_transform)
    assert "ColorJitter" in repr(without.train_transform)


def test_auto_augment_instead_of_rand_augment():
    recipe = AUGMENTATIONS.build("deit", img_size=32, rand_augment=None, auto_augment="original", simple_crop=True)
    assert "auto_augment" in recipe.techniques() and "rand_augment" not in recipe.techniques()
    assert "AutoAugment" in repr(recipe.train_transform)
    assert recipe.train_transform(_image()).shape == (3, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(auto_augment="v0"), "both set"),
        (dict(rand_augment="rand-m9-mstdx"), "bad sections"),
        (dict(rand_augment="rnd-m9"), "not a RandAugment string"),
        (dict(rand_augment="rand-z3"), "bad sections"),
        (dict(rand_augment="rand-m9-tweight"), "bad sections"),
        (dict(rand_augment=None, auto_augment="v1"), "not an AutoAugment policy"),
        (dict(rand_augment=None, auto_augment="rand-m9"), "goes in aug.rand_augment"),
        (dict(rand_augment=None, auto_augment="original-m9"), "not an AutoAugment policy"),
        (dict(random_erasing=1.5), "aug.random_erasing"),
        (dict(mixup=-1.0), "aug.mixup"),
        (dict(mixup_mode="rows"), "aug.mixup_mode"),
        (dict(random_erasing_mode="zeros"), "aug.random_erasing_mode"),
        (dict(repeated_aug=0), "aug.repeated_aug"),
        (dict(scale=[0.5]), "aug.scale"),
        (dict(scale=[0.9, 0.1]), "aug.scale"),
        (dict(scale=[0.5, 1.0], simple_crop=True), "unused with aug.simple_crop"),
        (dict(interpolation="lanczos"), "aug.interpolation"),
    ],
)
def test_invalid_knobs_raise_naming_the_key(kwargs, match: str):
    with pytest.raises(ValueError, match=match):
        AUGMENTATIONS.build("deit", img_size=224, **kwargs)


def test_check_policy_without_building():
    check_policy("rand-m9-mstd0.5-inc1", None)
    check_policy("rand-m7-n3-mstd1.0-tweights", None)
    check_policy(None, "originalr-mstd0.5")
    check_policy(None, None)
    with pytest.raises(ValueError, match="timm"):
        check_policy("rand-p1.2.3", None)  # well-formed sections, but not a number


def test_rrc_at_32px_warns_towards_simple_crop():
    with pytest.warns(UserWarning, match="simple_crop"):
        AUGMENTATIONS.build("deit", img_size=32)


def test_check_batch_size():
    recipe = AUGMENTATIONS.build("deit", img_size=224)
    recipe.check_batch_size(64)
    with pytest.raises(ValueError, match="even batch"):
        recipe.check_batch_size(63)
    AUGMENTATIONS.build("deit", img_size=224, mixup=0.0, cutmix=0.0).check_batch_size(63)


def test_mixup_object_and_soft_targets():
    recipe = AUGMENTATIONS.build("cifar", img_size=32, mixup_switch_prob=0.0)
    mix = recipe.mixup(num_classes=10, label_smoothing=0.1)
    assert isinstance(mix, Mixup)
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.mix_prob, mix.switch_prob) == (0.8, 1.0, 1.0, 0.0)
    images, targets = mix(torch.randn(8, 3, 32, 32), torch.arange(8) % 10)
    assert images.shape == (8, 3, 32, 32) and targets.shape == (8, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))


@pytest.mark.parametrize("name", ["deit", "cifar", "none"])
def test_transform_shapes_at_32px(name: str):
    recipe = AUGMENTATIONS.build(name, img_size=32, simple_crop=True)
    for seed in range(5):
        assert recipe.train_transform(_image(seed=seed)).shape == (3, 32, 32)
    evaluated = recipe.eval_transform(_image())
    assert evaluated.shape == (3, 32, 32)
    assert torch.equal(evaluated, recipe.eval_transform(_image()))  # deterministic


def test_transform_shapes_at_224px():
    recipe = AUGMENTATIONS.build("deit", img_size=224)
    image = Image.fromarray(np.full((300, 260, 3), 128, dtype=np.uint8))
    assert recipe.train_transform(image).shape == (3, 224, 224)
    assert recipe.eval_transform(image).shape == (3, 224, 224)
    assert "Resize(size=256" in repr(recipe.eval_transform)  # 224 / 0.875, as the reference


def test_posterize_to_zero_bits_does_not_raise():
    """RandAugment's PosterizeIncreasing reaches 0 bits at magnitude 10, which Pillow 13 rejects (pinned <13)."""
    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    assert op(_image(8)).size == (8, 8)


def test_full_deit_recipe_survives_many_draws():
    """2000 draws of RandAugment(m9, mstd0.5) + erasing on tiny images: no op may raise for any magnitude."""
    random.seed(0)
    torch.manual_seed(0)
    recipe = AUGMENTATIONS.build("deit", img_size=16, scale=[0.08, 1.0])
    images = [_image(16, seed) for seed in range(20)]
    for draw in range(2000):
        assert recipe.train_transform(images[draw % 20]).shape == (3, 16, 16)


@pytest.mark.parametrize("knobs", [{}, {"rand_augment": None}, {"rand_augment": None, "auto_augment": "original-mstd0.5"}])
def test_per_image_path_is_timms_create_transform(knobs):
    """The techniques' per-image transforms are what timm.data.create_transform builds, draw for draw."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    recipe = AUGMENTATIONS.build("deit", img_size=48, scale=[0.08, 1.0], **knobs)
    policy = knobs.get("auto_augment") or knobs.get("rand_augment", "rand-m9-mstd0.5-inc1")
    timm_transform = create_transform(
        48, is_training=True, scale=(0.08, 1.0), hflip=0.5, color_jitter=0.3, auto_augment=policy,
        interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, re_prob=0.25, re_mode="pixel",
    )  # fmt: skip
    image = _image(64)
    for seed in range(30):
        outputs = []
        for transform in (recipe.train_transform, timm_transform):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            outputs.append(transform(image))
        assert torch.equal(*outputs), seed


def test_recipes_doc_quotes_the_deit_defaults():
    """docs/RECIPES.md's table of the paper's knobs says what the package's defaults are (their one home:
    ``DEIT`` in research/data/augment.py and the techniques' fields), and lists every value ``DEIT`` sets."""
    text = (Path(__file__).parents[2] / "docs" / "RECIPES.md").read_text()
    table = text[text.index("The knobs of `deit` and `cifar`") : text.index("`none` sets all of these off")]
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", table, flags=re.MULTILINE))
    defaults = {k: p.default for k, p in AUGMENTATIONS.signature("deit").parameters.items()}
    assert set(DEIT) <= set(rows)
    assert {key: yaml.safe_load(value) for key, value in rows.items()} == {key: defaults[key] for key in rows}
