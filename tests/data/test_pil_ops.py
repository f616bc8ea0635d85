"""Every batched op against timm's (Pillow's) op on the same parameters, within Pillow's rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa
from torchvision.transforms import ColorJitter
from torchvision.transforms import functional as TF

from research.data import pil_ops as P
from research.data.batch_ops import OPS

FILL = (124, 116, 104)  # timm's img_mean for the ImageNet mean


def _images(count: int = 12, size: int = 24, seed: int = 0) -> list[np.ndarray]:
    """Noise, smooth images (upsampled noise) and a flat one: edges, gradients and a degenerate histogram."""
    rng = np.random.default_rng(seed)
    noise = [rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8) for _ in range(count // 2)]
    smooth = [
        np.asarray(Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).resize((size + 4, size), Image.BICUBIC))
        for _ in range(count - count // 2 - 1)
    ]
    return [*noise, *smooth, np.full((size, size + 4, 3), 77, np.uint8)]


def _batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()  # (B, 3, H, W) pixel values


def _pil(images: list[np.ndarray], fn) -> torch.Tensor:
    return _batch([np.asarray(fn(Image.fromarray(image), i)) for i, image in enumerate(images)])


def _assert_within_rounding(out: torch.Tensor, expected: torch.Tensor, *, differing: float = 0.05) -> None:
    assert out.shape == expected.shape
    diff = (out - expected).abs()
    assert diff.max() <= 1, f"{(diff > 1).sum()} pixels off by more than one level (max {diff.max()})"
    assert (diff > 0).float().mean() <= differing, f"{(diff > 0).float().mean():.3f} of the pixels differ by one level"


# (op name, arguments per image (B,)): each through timm's NAME_TO_OP and through OPS.
def _arguments(name: str, count: int) -> torch.Tensor:
    spans = {
        "Rotate": (-30, 30), "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "TranslateXRel": (-0.45, 0.45),
        "TranslateYRel": (-0.45, 0.45), "TranslateX": (-10, 10), "TranslateY": (-10, 10), "Posterize": (0, 8),
        "Solarize": (0, 256), "SolarizeAdd": (0, 110), "Desaturate": (0.5, 1),
    }  # fmt: skip
    low, high = spans.get(name.replace("Increasing", "").replace("Original", ""), (0.1, 1.9))
    values = torch.linspace(low, high, count, dtype=torch.float64)
    return values.round() if name.startswith(("Posterize", "Solarize")) else values  # integer arguments


_CASES = [(name, resample) for name in sorted(OPS) for resample in ((P.BILINEAR, P.BICUBIC) if OPS[name][2] else (None,))]


@pytest.mark.parametrize(("name", "resample"), _CASES, ids=[f"{n}-{r}" for n, r in _CASES])
def test_each_op_is_timms_pil_op(name: str, resample: int | None) -> None:
    images = _images()
    level, fn, geometric = OPS[name]
    args = _arguments(name, len(images))
    timm_op = timm_aa.NAME_TO_OP[name]
    extra = {"resample": resample, "fillcolor": FILL} if geometric else {}
    integer = name.startswith(("Posterize", "Solarize"))  # timm's level functions give these ints

    def arguments(i: int) -> list[float]:
        return [] if level is OPS["Invert"][0] else [int(args[i]) if integer else float(args[i])]

    expected = _pil(images, lambda image, i: timm_op(image, *arguments(i), **extra))
    batch = _batch(images)
    out = fn(batch, args, resample, FILL) if geometric else fn(batch, args)
    # The colour and point ops are Pillow's exactly; the resamples differ by one level on at most 3%
    # of the pixels (Geometry.c's double-precision sums against float32 here; 2.2% at most, Rotate).
    _assert_within_rounding(out, expected, differing=0.03 if geometric else 0.0)


def test_random_interpolation_picks_per_image() -> None:
    images, degrees = _images(), torch.linspace(-30, 30, 12)
    resample = torch.tensor([P.BILINEAR, P.BICUBIC] * 6)
    out = P.affine(_batch(images), P.rotation_matrix(degrees, 28, 24), resample, FILL)
    expected = _pil(images, lambda image, i: image.rotate(float(degrees[i]), resample=int(resample[i]), fillcolor=FILL))
    _assert_within_rounding(out, expected)


def test_nearest_affine_is_pils_but_at_exact_sample_boundaries() -> None:
    # Pillow samples NEAREST affines in 16.16 fixed point: a coordinate landing on a pixel border may round the other way.
    images, shear = _images(), torch.linspace(-0.3, 0.3, 12)
    matrix = P.identity_matrix(12, torch.device("cpu"))
    matrix[:, 1] = shear
    out = P.affine(_batch(images), matrix, P.NEAREST, FILL)
    expected = _pil(images, lambda image, i: timm_aa.shear_x(image, float(shear[i]), resample=P.NEAREST, fillcolor=FILL))
    assert ((out - expected).abs() > 0).float().mean() < 0.01


@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("size", [40, 9])  # enlarging, and shrinking (Resample.c's antialiasing support)
def test_resized_crop_is_torchvisions_on_pil(mode: str, size: int) -> None:
    images = _images()
    box = torch.tensor([[i % 5, (2 * i) % 7, 10 + i, 22 - i] for i in range(len(images))])  # (top, left, height, width), inside
    interpolation = TF.InterpolationMode(mode)
    expected = _pil(images, lambda image, i: TF.resized_crop(image, *box[i].tolist(), [size, size], interpolation))
    out = P.resized_crop(_batch(images), box, size, {"bicubic": P.BICUBIC, "bilinear": P.BILINEAR, "nearest": P.NEAREST}[mode])
    if mode == "nearest":  # Pillow accumulates the source coordinate (xo += scale): at exact borders it may pick the neighbour
        assert ((out - expected).abs() > 0).float().mean() < 0.03
    else:
        _assert_within_rounding(out, expected)


def test_color_jitter_ops_are_torchvisions_on_pil() -> None:
    images, factors = _images(), torch.linspace(0.6, 1.4, 12)
    batch = _batch(images)
    for op, tv in ((P.brightness, TF.adjust_brightness), (P.contrast, TF.adjust_contrast), (P.color, TF.adjust_saturation)):
        _assert_within_rounding(op(batch, factors), _pil(images, lambda image, i, tv=tv: tv(image, float(factors[i]))))
    assert ColorJitter(0.4).brightness == (0.6, 1.4)  # the range the factors above span


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "TranslateXRel", "TranslateX", "ColorIncreasing", "PosterizeIncreasing",
                                  "PosterizeOriginal", "SolarizeIncreasing", "SolarizeAdd", "Sharpness", "Desaturate"])  # fmt: skip
def test_level_functions_are_timms(name: str) -> None:
    magnitudes = torch.linspace(0, 10, 41, dtype=torch.float64)
    hparams = {"translate_const": 100, "translate_pct": 0.45}
    level = OPS[name][0](magnitudes, hparams, torch.Generator().manual_seed(0))
    expected = torch.tensor([timm_aa.LEVEL_TO_ARG[name](float(m), hparams)[0] for m in magnitudes], dtype=torch.float64)
    if name in ("Rotate", "ShearX", "TranslateXRel", "TranslateX"):  # timm negates at random: compare sizes, see both signs
        torch.testing.assert_close(level.abs(), expected.abs())
        assert (level[1:] > 0).any() and (level[1:] < 0).any()
    elif name == "ColorIncreasing":  # 1 +- level: compare the distance from 1
        torch.testing.assert_close((level - 1).abs(), (expected - 1).abs())
    else:
        torch.testing.assert_close(level, expected)
