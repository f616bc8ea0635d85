"""Crop, flip and cutout on whole uint8 batches: the per-image pipeline's result, drawn per batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from research.data.batch_augment import BatchAugment, BatchAugmentParams, BatchResizedCrop, InMemoryBatches, alternating_flips
from research.data.batch_ops import OPS, BatchAutoAugment, BatchColorJitter, BatchRandAugment, BatchRandomErasing
from research.registry import AUGMENTATIONS

CROP_FLIP_ONLY = {"rand_augment": None, "color_jitter": None, "random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0}


def _crop_flip_recipe(**knobs):
    return AUGMENTATIONS.build("cifar", img_size=32, **{**CROP_FLIP_ONLY, **knobs})


def _pixels(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_batch_result_is_the_per_image_pipeline_for_the_same_draws() -> None:
    recipe = _crop_flip_recipe()
    batch = recipe.batch_transform
    pixels = _pixels(64)
    params = batch.sample(64, 32, 32, torch.Generator().manual_seed(1))
    assert params.flip.any() and not params.flip.all()  # both branches are compared

    out = batch.apply(pixels, params)

    expected = []
    for image, top, left, flip in zip(pixels, params.top, params.left, params.flip):
        pil = TF.crop(TF.pad(Image.fromarray(image.numpy()), 4), int(top), int(left), 32, 32)  # torchvision RandomCrop(32, padding=4)
        expected.append(recipe.eval_transform(TF.hflip(pil) if flip else pil))  # ToTensor + Normalize
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.stack(expected), atol=1e-5, rtol=0)


def test_cutout_is_the_per_image_erasing_of_a_fixed_square() -> None:
    recipe = _crop_flip_recipe(cutout=8)
    assert "cutout" in recipe.techniques() and recipe.batch_transform.geometry.cutout == 8
    batch = recipe.batch_transform
    pixels = _pixels(32)
    params = batch.sample(32, 32, 32, torch.Generator().manual_seed(2))
    assert params.cut_top.min() >= 0 and params.cut_top.max() <= 24  # the square stays inside the image

    out = batch.apply(pixels, params)

    for i in range(32):
        pil = TF.crop(TF.pad(Image.fromarray(pixels[i].numpy()), 4), int(params.top[i]), int(params.left[i]), 32, 32)
        pil = TF.hflip(pil) if params.flip[i] else pil
        expected = TF.erase(recipe.eval_transform(pil), int(params.cut_top[i]), int(params.cut_left[i]), 8, 8, v=0)
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)
    assert (out == 0).all(dim=1).sum(dim=(1, 2)).min() >= 64  # each image has its 8x8 square of zeros


def test_per_image_cutout_erases_one_square_of_that_size() -> None:
    recipe = AUGMENTATIONS.build("none", img_size=32, simple_crop=True, cutout=8)
    zeros = (recipe.train_transform(Image.new("RGB", (32, 32), (200, 30, 90))) == 0).all(dim=0)  # (32, 32)
    rows, cols = zeros.nonzero(as_tuple=True)
    assert zeros.sum() == 64 and rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
    with pytest.raises(ValueError, match="aug.cutout"):
        AUGMENTATIONS.build("none", img_size=32, cutout=33)


def test_crop_padding_reaches_both_paths_and_is_checked() -> None:
    recipe = _crop_flip_recipe(crop_padding=2)
    assert recipe.batch_transform.geometry.padding == 2
    assert [t.padding for t in recipe.train_transform.transforms if hasattr(t, "padding")] == [2]  # RandomCrop
    assert _crop_flip_recipe().batch_transform.geometry.padding == 4  # the default: img_size / 8
    params = recipe.batch_transform.sample(5000, 32, 32, torch.Generator().manual_seed(0))
    assert set(params.top.tolist()) == set(range(5))
    with pytest.raises(ValueError, match="aug.crop_padding=-1: must be >= 0"):
        _crop_flip_recipe(crop_padding=-1)
    with pytest.raises(ValueError, match="unused without aug.simple_crop"):
        _crop_flip_recipe(crop_padding=2, simple_crop=False)


def test_reflect_padding_is_the_per_image_reflect_crop_for_the_same_draws() -> None:
    recipe = _crop_flip_recipe(crop_padding=2, crop_padding_mode="reflect")
    batch = recipe.batch_transform
    assert batch.geometry.padding_mode == "reflect"
    crops = [t for t in recipe.train_transform.transforms if hasattr(t, "padding_mode")]
    assert [(t.padding, t.padding_mode) for t in crops] == [(2, "reflect")]  # the per-image RandomCrop
    pixels = _pixels(64, seed=3)
    params = batch.sample(64, 32, 32, torch.Generator().manual_seed(4))
    assert {0, 4} <= set(params.top.tolist()) and params.flip.any()  # both borders and both flips are compared

    out = batch.apply(pixels, params)

    for i in range(64):
        padded = TF.pad(Image.fromarray(pixels[i].numpy()), 2, padding_mode="reflect")
        pil = TF.crop(padded, int(params.top[i]), int(params.left[i]), 32, 32)
        expected = recipe.eval_transform(TF.hflip(pil) if params.flip[i] else pil)
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)
    zero_padded = _crop_flip_recipe(crop_padding=2).batch_transform.apply(pixels, params)
    assert not torch.equal(out, zero_padded)  # the border crops differ from zero padding


def test_padding_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="aug.crop_padding_mode 'edge' is not one of constant, reflect"):
        _crop_flip_recipe(crop_padding_mode="edge")
    with pytest.raises(ValueError, match="unused without aug.simple_crop"):
        _crop_flip_recipe(crop_padding_mode="reflect", simple_crop=False)
    with pytest.raises(ValueError, match="reflect needs aug.crop_padding < img_size"):
        _crop_flip_recipe(crop_padding=32, crop_padding_mode="reflect")
    with pytest.raises(ValueError, match="needs images larger"):
        BatchAugment(8, 8, 0.5, (0.5,) * 3, (0.5,) * 3, padding_mode="reflect").sample(1, 8, 8)


def test_alternating_flips_show_each_image_both_ways_every_two_epochs() -> None:
    rows = torch.arange(10_000)
    even, odd = alternating_flips(rows, 0, 10_000, seed=0), alternating_flips(rows, 1, 10_000, seed=0)
    assert (even ^ odd).all()  # each image mirrored in exactly one of two consecutive epochs
    assert even.float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(alternating_flips(rows, 4, 10_000, seed=0), even)
    assert not torch.equal(alternating_flips(rows, 0, 10_000, seed=1), even)  # the seed picks the half
    picked = torch.tensor([7, 3, 9_999])
    assert torch.equal(alternating_flips(picked, 0, 10_000, seed=0), even[picked])  # a row keeps its coin


def test_in_memory_batches_alternate_each_rows_flip_between_epochs() -> None:
    recipe = _crop_flip_recipe(alternate_flip=True)
    assert recipe.batch_transform.geometry.alternate_flip and "alternate_flip" in recipe.techniques()
    pixels, targets = _pixels(60).numpy(), list(range(60))
    orders = [torch.randperm(60, generator=torch.Generator().manual_seed(epoch)).tolist() for epoch in range(2)]
    flips = []
    for epoch, order in enumerate(orders):
        batches = InMemoryBatches(pixels, targets, order, 12, recipe.batch_transform, train=True, epoch=epoch, flip_seed=5)
        flips.append(dict(zip(order, batches.params.flip.tolist())))
    assert all(flips[0][row] != flips[1][row] for row in range(60))
    with pytest.raises(ValueError, match="needs aug.hflip: 0.5"):
        _crop_flip_recipe(alternate_flip=True, hflip=0.3)


def test_draws_cover_every_offset_and_flip_at_the_recipe_rate() -> None:
    params = BatchAugment(32, 4, 0.5, (0.5,) * 3, (0.5,) * 3).sample(20_000, 32, 32, torch.Generator().manual_seed(0))
    assert set(params.top.tolist()) == set(range(9)) == set(params.left.tolist())  # RandomCrop: [0, 2 * padding]
    assert params.flip.float().mean().item() == pytest.approx(0.5, abs=0.02)
    never = BatchAugment(32, 4, 0.0, (0.5,) * 3, (0.5,) * 3).sample(1000, 32, 32)
    assert not never.flip.any()


def test_unpadded_crop_of_larger_images_and_errors() -> None:
    batch = BatchAugment(24, 0, 0.0, (0.0,) * 3, (1 / 255,) * 3)  # normalised values are the raw pixels
    pixels = _pixels(4, size=32)
    params = BatchAugmentParams(top=torch.tensor([0, 8, 3, 5]), left=torch.tensor([8, 0, 2, 7]), flip=torch.zeros(4, dtype=torch.bool))
    out = batch.apply(pixels, params)
    for i in range(4):
        window = pixels[i, params.top[i] : params.top[i] + 24, params.left[i] : params.left[i] + 24].permute(2, 0, 1)
        torch.testing.assert_close(out[i], window.float())
    with pytest.raises(ValueError, match="does not fit"):
        BatchAugment(40, 2, 0.5, (0.5,) * 3, (0.5,) * 3).sample(1, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        batch.apply(pixels.float(), params)


@pytest.mark.parametrize(
    "knobs, technique, op",
    [
        ({"rand_augment": "rand-m9-mstd0.5-inc1"}, "rand_augment", BatchRandAugment),
        ({"auto_augment": "v0"}, "auto_augment", BatchAutoAugment),
        ({"color_jitter": 0.3}, "color_jitter", BatchColorJitter),
        ({"random_erasing": 0.25}, "random_erasing", BatchRandomErasing),
        ({"simple_crop": False, "scale": [0.5, 1.0]}, "random_resized_crop", None),
    ],
)
def test_every_deit_technique_has_a_batch_version(knobs, technique, op) -> None:
    recipe = _crop_flip_recipe(**knobs)
    assert technique in recipe.techniques() and recipe.per_image_techniques() == []
    batch = recipe.batch_transform
    assert [type(o) for o in (*batch.pixel_ops, *batch.tensor_ops)] == ([op] if op else [])
    if op is None:
        assert isinstance(batch.geometry, BatchResizedCrop) and batch.geometry.scale == (0.5, 1.0)
    out = batch.apply(_pixels(8), batch.sample(8, 32, 32, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32 and out.isfinite().all()


def test_a_technique_without_a_batch_version_is_named() -> None:
    recipe = _crop_flip_recipe(auto_augment="3a")  # DeiT III's 3-Augment: PIL's GaussianBlur, not batched
    assert recipe.batch_transform is None
    assert recipe.per_image_techniques() == ["auto_augment (aug.auto_augment='3a': timm op 'GaussianBlurRand' "
                                             f"has no whole-batch version (batched: {', '.join(OPS)}))"]


def test_batch_version_keeps_flip_rate_and_ignores_batch_level_techniques() -> None:
    recipe = _crop_flip_recipe(hflip=0.0, mixup=0.8, repeated_aug=3)
    assert recipe.batch_transform is not None and recipe.batch_transform.geometry.hflip == 0.0
    assert recipe.mixup_active and recipe.repeats == 3  # mixing stays in the loop, repeats in the sampler


def test_batches_follow_the_indices_and_a_skip_resumes_the_same_draws() -> None:
    pixels = _pixels(50).numpy()
    targets = list(range(50))
    order = np.random.default_rng(0).permutation(50).tolist()
    transform = _crop_flip_recipe().batch_transform

    def batches(skip: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        epoch = InMemoryBatches(
            pixels, targets, order, 8, transform, train=True, drop_last=True,
            generator=torch.Generator().manual_seed(3), skip_batches=skip,
        )  # fmt: skip
        assert len(epoch) == 6 - skip
        return list(epoch)

    full, resumed = batches(0), batches(2)
    assert [len(t) for _, t in full] == [8] * 6  # 50 // 8 batches, the short one dropped
    assert torch.cat([t for _, t in full]).tolist() == order[:48]
    for (a_images, a_targets), (b_images, b_targets) in zip(full[2:], resumed):
        assert torch.equal(a_targets, b_targets) and torch.equal(a_images, b_images)


def test_evaluation_batches_are_the_eval_transform_of_every_image() -> None:
    recipe = _crop_flip_recipe()
    pixels = _pixels(10).numpy()
    batches = list(InMemoryBatches(pixels, list(range(10)), list(range(10)), 4, recipe.batch_transform, train=False))
    assert [len(t) for _, t in batches] == [4, 4, 2]  # no image dropped at evaluation
    expected = torch.stack([recipe.eval_transform(Image.fromarray(image)) for image in pixels])
    torch.testing.assert_close(torch.cat([images for images, _ in batches]), expected, atol=1e-5, rtol=0)


def test_grayscale_is_torchvisions_random_grayscale_on_both_paths() -> None:
    """The technique added last, as one field and one class (research/data/techniques.py: Grayscale)."""
    recipe = _crop_flip_recipe(grayscale=0.3)
    assert "grayscale" in recipe.techniques() and "RandomGrayscale(p=0.3)" in repr(recipe.train_transform)
    batch = recipe.batch_transform
    pixels = _pixels(2000)
    params = batch.sample(2000, 32, 32, torch.Generator().manual_seed(0))
    out = batch.apply(pixels, params, torch.Generator().manual_seed(1))
    levels = torch.from_numpy(plain_pixels(out))  # (B, H, W, 3) uint8
    grey = (levels[..., 0] == levels[..., 1]).flatten(1).all(1) & (levels[..., 1] == levels[..., 2]).flatten(1).all(1)
    assert grey.float().mean().item() == pytest.approx(0.3, abs=0.035)  # 3.5 standard deviations
    plain = _crop_flip_recipe().batch_transform.apply(pixels, params)  # the same crops, no grayscale
    image = int(grey.nonzero()[0])
    expected = np.asarray(TF.rgb_to_grayscale(Image.fromarray(plain_pixels(plain[image])), num_output_channels=3))
    torch.testing.assert_close(out[image], recipe.eval_transform(Image.fromarray(expected)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"aug.grayscale=1.5: must be >= 0 and <= 1 \(a probability\)"):
        _crop_flip_recipe(grayscale=1.5)


def plain_pixels(normalised: torch.Tensor) -> np.ndarray:
    """Normalised ``(..., 3, H, W)`` images back to ``(..., H, W, 3)`` uint8 pixels."""
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return torch.round((normalised * std + mean) * 255).clamp(0, 255).byte().movedim(-3, -1).numpy()
