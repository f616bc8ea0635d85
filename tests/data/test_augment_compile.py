"""The batched recipe's transform is a pure function of (pixels, draws) that torch.compile traces whole."""

from __future__ import annotations

import pytest
import torch

from research.registry import AUGMENTATIONS

OFF = {"mixup": 0.0, "cutmix": 0.0}
RECIPES = {
    "rand_augment": {"rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.5, "random_erasing_count": 2,
                     "grayscale": 0.2, "cutout": 8, "simple_crop": False, "interpolation": "random"},
    "auto_augment": {"rand_augment": None, "auto_augment": "original-mstd0.5", "random_erasing": 0.5, "random_erasing_mode": "rand",
                     "simple_crop": True, "crop_padding_mode": "reflect", "crop_padding": 3},
    "color_jitter": {"rand_augment": None, "color_jitter": 0.4, "grayscale": 0.3, "random_erasing": 0.5,
                     "random_erasing_mode": "const", "cutout": 6, "alternate_flip": False},
}  # fmt: skip


def _batch(recipe, count: int = 6):
    transform = recipe.batch_transform
    pixels = torch.randint(0, 256, (count, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    params = transform.sample(count, 32, 32, torch.Generator().manual_seed(1))
    return transform, pixels, transform.draw(params, torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_transform_has_no_graph_break(name: str) -> None:
    recipe = AUGMENTATIONS.build("cifar", img_size=32, **OFF, **RECIPES[name])
    assert recipe.per_image_techniques() == []
    transform, pixels, draws = _batch(recipe)
    explained = torch._dynamo.explain(transform.transform)(pixels, draws)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_the_compiled_transform_is_the_eager_one() -> None:
    recipe = AUGMENTATIONS.build("cifar", img_size=32, **OFF, **RECIPES["rand_augment"])
    transform, pixels, draws = _batch(recipe)
    compiled = torch.compile(transform.transform, backend="eager", fullgraph=True)  # fullgraph: a break raises
    torch.testing.assert_close(compiled(pixels, draws), transform.transform(pixels, draws), atol=0, rtol=0)


def test_the_transform_reads_no_generator_and_repeats_its_result() -> None:
    """Everything random is in the draws: the same draws give the same images, other draws others."""
    recipe = AUGMENTATIONS.build("cifar", img_size=32, **OFF, **RECIPES["rand_augment"])
    transform, pixels, draws = _batch(recipe)
    first = transform.transform(pixels, draws)
    torch.manual_seed(123)  # the global generator plays no part
    torch.testing.assert_close(transform.transform(pixels, draws), first, atol=0, rtol=0)
    other = transform.draw(draws.geometry, torch.Generator().manual_seed(3))
    assert not torch.equal(transform.transform(pixels, other), first)


def test_the_cpu_shortcut_gives_the_whole_batch_result() -> None:
    """Eager on the CPU an op runs on the images it changes; on a device (or here, whole_batches) on all."""
    from research.data.batch_ops import whole_batches

    for name in sorted(RECIPES):
        transform, pixels, draws = _batch(AUGMENTATIONS.build("cifar", img_size=32, **OFF, **RECIPES[name]), count=24)
        with whole_batches():
            whole = transform.transform(pixels, draws)
        torch.testing.assert_close(transform.transform(pixels, draws), whole, atol=0, rtol=0)
