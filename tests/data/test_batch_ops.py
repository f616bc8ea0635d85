"""The batched techniques draw what timm draws: op choices, magnitudes, boxes and factors, compared
with timm's per-image draws (fixed seeds) by chi-square and two-sample Kolmogorov-Smirnov tests."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import auto_augment_transform, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms import ColorJitter

from research.data.batch_augment import BatchResizedCrop
from research.data.batch_ops import BatchAutoAugment, BatchColorJitter, BatchRandAugment, BatchRandomErasing
from research.registry import AUGMENTATIONS

HPARAMS = {"translate_const": 14, "img_mean": (124, 116, 104), "interpolation": Image.BICUBIC}
N = 3000
ALPHA = 1e-3  # the seeds are fixed, so a test either always passes or always fails; this keeps a true match passing


def chi_square_p(a: Counter, b: Counter) -> float:
    """p-value of Pearson's chi-square test that two samples of categories come from one distribution."""
    keys = sorted(set(a) | set(b))
    table = torch.tensor([[a[k] for k in keys], [b[k] for k in keys]], dtype=torch.float64)  # (2, K)
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    statistic = ((table - expected) ** 2 / expected).sum()
    dof = len(keys) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic / 2))


def ks_p(a: list[float], b: list[float]) -> float:
    """Asymptotic p-value of the two-sample Kolmogorov-Smirnov test (Smirnov's series)."""
    x, y = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    grid = np.concatenate([x, y])
    d = np.abs(np.searchsorted(x, grid, side="right") / len(x) - np.searchsorted(y, grid, side="right") / len(y)).max()
    n = len(x) * len(y) / (len(x) + len(y))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    return float(min(1.0, max(0.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101)))))


def test_the_statistics_can_fail() -> None:
    rng = np.random.default_rng(0)
    assert ks_p(rng.normal(0, 1, 2000).tolist(), rng.normal(0, 1, 2000).tolist()) > ALPHA
    assert ks_p(rng.normal(0, 1, 2000).tolist(), rng.normal(0.2, 1, 2000).tolist()) < ALPHA
    assert chi_square_p(Counter(rng.integers(0, 5, 3000).tolist()), Counter(rng.integers(0, 5, 3000).tolist())) > ALPHA
    skewed = Counter(rng.choice(5, 3000, p=[0.28, 0.18, 0.18, 0.18, 0.18]).tolist())
    assert chi_square_p(Counter(rng.integers(0, 5, 3000).tolist()), skewed) < ALPHA


def _record_timm(transform, count: int) -> dict[str, list[float]]:
    """Run timm's policy ``count`` times with every op replaced by a recorder of its name and argument."""
    drawn: dict[str, list[float]] = defaultdict(list)
    ops = transform.ops if hasattr(transform, "ops") else [op for sub in transform.policy for op in sub]
    for op in ops:
        op.aug_fn = lambda image, *args, name=op.name, **_: drawn[name].append(float(args[0]) if args else 0.0) or image
    random.seed(0)
    np.random.seed(0)
    image = Image.new("RGB", (8, 8))
    for _ in range(count):
        transform(image)
    return drawn


def _record_batched(batched, count: int) -> dict[str, list[float]]:
    """The ops and arguments the batched policy drew for ``count`` images, by name (the layers that run)."""
    params = batched.draw(count, (8, 8), torch.Generator().manual_seed(0), torch.device("cpu"))
    drawn: dict[str, list[float]] = defaultdict(list)
    for op, arg in zip(params["op"][params["on"]].tolist(), params["arg"][params["on"]].tolist()):
        drawn[batched.names[op]].append(arg)
    return drawn


def _compare_draws(timm_draws: dict[str, list[float]], batch_draws: dict[str, list[float]]) -> None:
    counts = Counter({k: len(v) for k, v in timm_draws.items()}), Counter({k: len(v) for k, v in batch_draws.items()})
    assert chi_square_p(*counts) > ALPHA, counts  # which ops run, how often
    assert sum(counts[0].values()) == pytest.approx(sum(counts[1].values()), rel=0.05)
    for name, values in timm_draws.items():
        if len(set(values)) > 1 and len(values) >= 50:  # each op's argument: magnitude noise, sign, level function
            assert ks_p(values, batch_draws[name]) > ALPHA, name


@pytest.mark.parametrize(
    "config",
    ["rand-m9-mstd0.5-inc1", "rand-m5-mstd0.5-inc1", "rand-m9-n3-p0.8", "rand-m7-mstd101-mmax9-inc1", "rand-m9-mstd1-tweights"],
)
def test_rand_augment_draws_timms_ops_and_magnitudes(config: str) -> None:
    timm_draws = _record_timm(rand_augment_transform(config, dict(HPARAMS)), N)
    batch_draws = _record_batched(BatchRandAugment(rand_augment_transform(config, dict(HPARAMS))), N)
    _compare_draws(timm_draws, batch_draws)


def test_a_wrong_distribution_is_caught() -> None:
    """The comparison above fails for a policy that differs only in its magnitude noise."""
    timm_draws = _record_timm(rand_augment_transform("rand-m9-mstd0.5-inc1", dict(HPARAMS)), N)
    batch_draws = _record_batched(BatchRandAugment(rand_augment_transform("rand-m9-mstd2-inc1", dict(HPARAMS))), N)
    with pytest.raises(AssertionError):
        _compare_draws(timm_draws, batch_draws)


@pytest.mark.parametrize("config", ["original-mstd0.5", "v0", "originalr"])
def test_auto_augment_draws_timms_sub_policies(config: str) -> None:
    timm_draws = _record_timm(auto_augment_transform(config, dict(HPARAMS)), N)
    batch_draws = _record_batched(BatchAutoAugment(auto_augment_transform(config, dict(HPARAMS))), N)
    _compare_draws(timm_draws, batch_draws)


def _pixels_of(image: Image.Image, count: int) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().expand(count, -1, -1, -1).contiguous()


def test_color_jitter_output_distribution_is_torchvisions() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    jitter = ColorJitter(0.4, 0.4, 0.4)
    torch.manual_seed(0)
    expected = [np.asarray(jitter(image), dtype=np.float64) for _ in range(1500)]
    out = BatchColorJitter(jitter)(_pixels_of(image, 1500), torch.Generator().manual_seed(0))
    for statistic in (lambda x: x.mean(), lambda x: x.std(), lambda x: x[..., 0].mean() - x[..., 2].mean()):
        got = [statistic(o.permute(1, 2, 0).numpy().astype(np.float64)) for o in out]
        assert ks_p([statistic(e) for e in expected], got) > ALPHA


@pytest.mark.parametrize(("mode", "count"), [("pixel", 1), ("pixel", 3), ("const", 1), ("rand", 2)])
def test_random_erasing_boxes_are_timms(mode: str, count: int) -> None:
    timm_erasing = RandomErasing(0.5, mode=mode, max_count=count, device="cpu")
    random.seed(0)
    torch.manual_seed(0)
    ones = torch.ones(3, 20, 24)
    expected = [(timm_erasing(ones.clone()) != 1).any(0).float().mean().item() for _ in range(N)]  # erased area
    out = BatchRandomErasing(timm_erasing)(torch.ones(N, 3, 20, 24), torch.Generator().manual_seed(0))
    got = (out != 1).any(1).float().mean((1, 2)).tolist()
    assert np.mean(np.asarray(got) > 0) == pytest.approx(np.mean(np.asarray(expected) > 0), abs=0.04)
    assert ks_p(expected, got) > ALPHA
    if mode == "pixel":  # per-pixel standard normal noise in the erased area
        values = out[out != 1]
        assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.5, 1.0)])
def test_resized_crop_boxes_are_timms(scale: tuple[float, float]) -> None:
    random.seed(0)
    image = Image.new("RGB", (28, 20))  # not square: the aspect-ratio fallback and the bounds matter
    expected = np.array([RandomResizedCropAndInterpolation.get_params(image, scale, (3 / 4, 4 / 3)) for _ in range(N)])
    crop = BatchResizedCrop(16, scale, (3 / 4, 4 / 3), "bicubic", 0.5, (0.5,) * 3, (0.5,) * 3)
    params = crop.sample(N, 20, 28, torch.Generator().manual_seed(0))
    got = np.stack([params.top, params.left, params.height, params.width], axis=1)
    assert (got[:, 0] + got[:, 2] <= 20).all() and (got[:, 1] + got[:, 3] <= 28).all()
    for column in range(4):  # top, left, height, width
        assert ks_p(expected[:, column].tolist(), got[:, column].tolist()) > ALPHA, column
    assert params.flip.float().mean().item() == pytest.approx(0.5, abs=0.03)


@pytest.mark.slow
def test_the_cifar_recipe_batched_and_per_image_give_the_same_output_distribution() -> None:
    """End to end: crop, flip, RandAugment, normalise, random erasing; per-image statistics of the outputs."""
    recipe = AUGMENTATIONS.build("cifar", img_size=32, mixup=0.0, cutmix=0.0)
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)  # 32x32 blocks
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    expected = torch.stack([recipe.train_transform(Image.fromarray(pixels)) for _ in range(1500)])
    batch = recipe.batch_transform
    batched = torch.from_numpy(pixels).expand(1500, -1, -1, -1).contiguous()
    out = batch.apply(batched, batch.sample(1500, 32, 32, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))
    for statistic in (lambda x: x.mean((1, 2, 3)), lambda x: x.std((1, 2, 3)), lambda x: x[:, :, :16].mean((1, 2, 3))):
        assert ks_p(statistic(expected).tolist(), statistic(out).tolist()) > ALPHA
