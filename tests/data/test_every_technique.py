"""Every augmentation technique (``research.data.techniques.TECHNIQUES``, plugins' included) on both
paths, as every model takes a training step: a new technique is covered without a test of its own.

Each technique is switched on from the ``none`` recipe at 32 px (its crop alone) by its ``example``
(the knob values that turn it on). Switched on, it names itself in the recipe's techniques; a technique
of the ``crop``/``pixels``/``tensor`` stages changes the images on the per-image path, and on the
batched path (the same draws) or names itself as per-image only; a ``batch`` or ``sampler`` technique
leaves the transforms alone (it mixes batches in the loop, or repeats images in the sampler).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from research.data.augment import Recipe
from research.data.techniques import TECHNIQUES, Technique
from research.registry import AUGMENTATIONS

SIZE, BATCH, SEEDS = 32, 16, 8
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


BASE = {"simple_crop": True, "hflip": 0.0}  # crop only: what a technique's example adds is all that is on


def build(**knobs: Any) -> Recipe:
    return AUGMENTATIONS.build("none", img_size=SIZE, **{**BASE, **knobs})


def _tags(recipe: Recipe, kind: type[Technique]) -> tuple[str, ...]:
    return tuple(recipe.part(kind).tags(recipe.ctx))


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
def test_every_technique_runs_on_both_paths(kind: type[Technique]) -> None:
    setting = kind.example
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
