"""PIL's image operations on whole batches, with a parameter per image, on any device.

timm's RandAugment / AutoAugment ops, torchvision's ColorJitter and timm's RandomResizedCrop call
Pillow one image at a time. The functions here compute what Pillow computes, for a ``(B, 3, H, W)``
float tensor holding integer pixel values in ``[0, 255]``: the same formulas (ImageEnhance's blends
against a degenerate image, ImageOps' lookup tables, Geometry.c's affine samplers, Resample.c's
separable filters) and the same quantisation back to integers after each op. They agree with Pillow
within its rounding (one grey level; tests/data/test_pil_ops.py compares every op).

Why not kornia or torchvision.transforms.v2: neither reproduces these semantics (docs/PERFORMANCE.md,
"The DeiT recipe on whole batches"): v2 draws one set of parameters per call, so a batch shares them;
kornia's colour ops are not Pillow's (contrast without the grey mean, its own RandAugment op ranges,
one policy per batch) and its bicubic kernel is not Geometry.c's.

Every argument that varies per image is a ``(B,)`` tensor on the images' device.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["affine", "affine_sample", "affine_taps", "blend", "blend_degenerate", "brightness", "color", "contrast", "grayscale", "pixel_table", "point_ops", "resized_crop"]

NEAREST, BILINEAR, BICUBIC = 0, 2, 3  # PIL's resample codes


def constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small constant tensor made once per device: a copy from the host each batch would make it wait.
    Under ``torch.compile`` it is a constant of the graph (dynamo would trace through the cache anyway)."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, device=device, dtype=dtype)
    return _cached_constant(values, device, dtype)


@functools.lru_cache(maxsize=64)
def _cached_constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(values, device=device, dtype=dtype)


def _column(values: Tensor) -> Tensor:
    return values.reshape(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)


def blend(degenerate: Tensor | float, images: Tensor, factor: Tensor) -> Tensor:
    """``Image.blend(degenerate, image, factor)``: Blend.c clips to [0, 255], then truncates."""
    scale = _column(factor).to(images.dtype)
    # Blend.c's in1 + factor * (in2 - in1), rounded as it rounds (a fused multiply-add would differ at some levels).
    mixed = images * scale if isinstance(degenerate, float) else (images - degenerate).mul_(scale).add_(degenerate)
    return mixed.clamp(0, 255).floor()


def grayscale(images: Tensor) -> Tensor:
    """``convert("L")``: ITU-R 601-2 luma in Convert.c's fixed point, ``(B, 1, H, W)``.

    In float: every product and sum is an integer below 2**24, so float32 holds it exactly.
    """
    weights = constant((19595.0, 38470.0, 7471.0), images.device, images.dtype).view(1, 3, 1, 1)
    return torch.div((images * weights).sum(1, keepdim=True) + 0x8000, 65536, rounding_mode="floor")


def color(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Color`` (torchvision's saturation on PIL): blend with the grey image."""
    return blend_degenerate(images, factor, _every(images), None, None)


def contrast(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Contrast``: blend with a flat image of the rounded mean grey level."""
    return blend_degenerate(images, factor, None, _every(images), None)


def brightness(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return blend_degenerate(images, factor, None, None, None)


def _every(images: Tensor) -> Tensor:
    return torch.ones(len(images), dtype=torch.bool, device=images.device)


# ImageFilter.SMOOTH, the degenerate image of ImageEnhance.Sharpness (divided by 13).
_SMOOTH = (1.0, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0, 1.0)


def blend_degenerate(images: Tensor, factor: Tensor, grey: Tensor | None, mean: Tensor | None, smooth: Tensor | None) -> Tensor:
    """ImageEnhance per image, against its own degenerate image: black (Brightness) unless ``grey``
    (Color), ``mean`` (Contrast) or ``smooth`` (Sharpness), ``(B,)`` masks (None: no image of that kind).

    A factor of 1 returns an image unchanged, whatever its degenerate image: a layer blends every image.
    """
    column = lambda mask: mask[:, None, None, None]  # noqa: E731
    degenerate: Tensor | float = 0.0
    if grey is not None or mean is not None:
        luma = grayscale(images)  # (B, 1, H, W)
        # Black is a flat image too: the mean grey level where ``mean``, else level 0 (no branch, no extra launch).
        # floor(mean + 0.5) = (sum + n / 2) // n: the sums of integer levels are exact in float below 2**24
        # levels (a 256 x 256 image), and so is the rest: no rounding in between.
        count = luma[0].numel()
        flat = 0.0
        if mean is not None:
            total = torch.addcmul(constant((count / 2,), images.device, images.dtype), luma.sum(dim=(1, 2, 3)), mean)
            flat = column(torch.div(total, count, rounding_mode="floor"))  # (B, 1, 1, 1)
        degenerate = torch.where(column(grey), luma, flat) if grey is not None else flat
    if smooth is not None:
        degenerate = torch.where(column(smooth), _smoothed(images), degenerate)
    return blend(degenerate, images, factor)


def pixel_table(step: Tensor, threshold: Tensor, add: Tensor) -> Tensor:
    """The lookup table ``(..., 256)`` of ImageOps' parametric point operations, each the identity at
    its default: posterize (``step`` = 2 ** (8 - bits); 1), solarize (``threshold``; 256, and 0
    inverts) and timm's solarize_add (``add``; 0). Arguments ``(...)``, the table in float64."""
    step, threshold, add = step[..., None], threshold[..., None], add[..., None]
    lut = (constant(tuple(range(256)), step.device, torch.float64) / step).floor_().mul_(step)
    lut = torch.where(lut < threshold, lut, 255.0 - lut)
    return torch.where(lut < 128, (lut + add).clamp_(max=255), lut)


def point_ops(images: Tensor, table: Tensor, stretch: Tensor, flatten: Tensor) -> Tensor:
    """ImageOps' point operations per image as one lookup: ``table`` ``(B, 256)`` (:func:`pixel_table`),
    then autocontrast (``stretch``, a ``(B,)`` mask) and equalize (``flatten``, a mask), each from the
    image's own histogram and the identity where its mask is off."""
    b, c, h, w = images.shape
    column = lambda values: values[:, None, None]  # noqa: E731  (B,) -> (B, 1, 1)
    lut = table[:, None]  # (B, 1, 256)
    pixels = images.reshape(b, c, h * w).long()
    # Counts in float: integers below 2**24 (a 4096 x 4096 image), exact in any order of addition.
    counts = torch.zeros(b, c, 256, dtype=torch.float32, device=images.device)
    counts.scatter_add_(2, pixels, constant((1.0,), images.device, torch.float32).expand(b, c, h * w))  # (B, 3, 256)
    below = counts.cumsum(2)  # (B, 3, 256): pixels at or below each level
    # The darkest and brightest levels: how many running sums are below 1/2 (empty levels under the
    # darkest), and below every pixel less 1/2 (levels under the brightest). One search, (B, 3, 2)
    # (its values contiguous: it would copy them itself, out of sight of a launch count).
    halves = constant((0.5, h * w - 0.5), images.device, torch.float32).expand(b, c, 2).contiguous()
    bounds = torch.searchsorted(below, halves)
    low, high = bounds[..., :1], bounds[..., 1:]  # (B, 3, 1) each
    # ImageOps.autocontrast (cutoff 0): lut[v] = int(v * scale + offset), truncated, in double.
    span = high - low
    stretched = column(stretch) & (span > 0)
    scale = torch.where(stretched, torch.div(constant((255.0,), images.device, torch.float64), span), 1.0)
    lut = torch.sub(lut * scale, low * stretched * scale).trunc_().clamp_(0, 255).to(images.dtype)  # (B, 3, 256)
    # ImageOps.equalize: the histogram flattened with an integer step; a channel with one level, or
    # fewer than 255 pixels outside its top level, is left as is (a step of 0, as an image not equalized,
    # whose division by 0 the where drops). Integers in float, exact.
    step = torch.div(h * w - counts.gather(2, high), 255, rounding_mode="floor") * column(flatten)  # (B, 3, 1)
    flat = torch.div(below - counts + torch.div(step, 2, rounding_mode="floor"), step, rounding_mode="floor").clamp_(max=255)
    lut = torch.where(step > 0, flat, lut)
    return lut.gather(2, pixels).view(b, c, h, w)


def _smoothed(images: Tensor) -> Tensor:
    """ImageFilter.SMOOTH, its border pixels unfiltered: the degenerate image of ImageEnhance.Sharpness."""
    # Integer weights: the sums are exact even where convolutions run in TF32; Filter.c rounds.
    kernel = constant(_SMOOTH, images.device, images.dtype).view(1, 1, 3, 3).expand(3, 1, 3, 3)
    smooth = F.conv2d(images, kernel, padding=1, groups=3).mul_(1 / 13).add_(0.5).floor_()  # (B, 3, H, W)
    return torch.where(_interior(images.shape[2], images.shape[3], images.device), smooth, images)


def _interior(height: int, width: int, device: torch.device) -> Tensor:
    """``(H, W)``: True off the image's border, made once per size and device (a constant when compiled)."""
    return _make_interior(height, width, device) if torch.compiler.is_compiling() else _cached_interior(height, width, device)


def _make_interior(height: int, width: int, device: torch.device) -> Tensor:
    return torch.tensor([[0 < y < height - 1 and 0 < x < width - 1 for x in range(width)] for y in range(height)], device=device)


_cached_interior = functools.lru_cache(maxsize=16)(_make_interior)


def affine(images: Tensor, matrix: Tensor, resample: int | Tensor, fill: tuple[int, int, int]) -> Tensor:
    """``Image.transform(size, AFFINE, matrix, resample, fillcolor=fill)`` for each image.

    One gather of the 4 x 4 source taps of every output pixel, whatever the filter: NEAREST and
    BILINEAR are taps with zero weights, so images with different filters (or the identity matrix,
    which reads each pixel back with weight 1 exactly) share one resample.

    Args:
        matrix: ``(B, 6)``: output pixel centre ``(x, y)`` maps to input ``(a x + b y + c, d x + e y + f)``.
        resample: PIL code NEAREST (0), BILINEAR (2) or BICUBIC (3), or a ``(B,)`` tensor of BILINEAR /
            BICUBIC per image (timm's random interpolation).
        fill: The colour of the pixels whose source lies outside the image.
    """
    return affine_sample(images, affine_taps(matrix, tuple(images.shape[2:]), resample, images.dtype), resample, fill)  # type: ignore[arg-type]


def affine_taps(matrix: Tensor, size: tuple[int, int], resample: int | Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Where :func:`affine` reads, for matrices ``(..., 6)`` (any leading shape: several layers' at once)
    of ``(H, W)`` images: tap indices ``(..., HW, 16)``, weights ``(..., HW, 2, 4)`` (along x, along y)
    and whether the source is inside ``(..., HW)``; ``resample`` a code, or a tensor of the leading shape."""
    h, w = size
    device = matrix.device
    grid = _centres(h, w, device)  # (H*W, 2): pixel centres (x, y), in double as Geometry.c
    m = matrix.to(torch.float64).unflatten(-1, (2, 3))[..., None, :, :]  # (..., 1, 2, 3): rows (a, b, c), (d, e, f)
    coords = torch.addcmul(torch.addcmul(m[..., 2], m[..., 0], grid[:, :1]), m[..., 1], grid[:, 1:])  # (..., HW, 2)
    size_xy = constant((float(w), float(h)), device, torch.float64)
    inside = (torch.floor_divide(coords, size_xy) == 0).all(-1)  # (..., HW): 0 <= x < width, 0 <= y < height
    shifted = coords - 0.5
    base = shifted.floor()
    d = (shifted - base)[..., None]  # (..., HW, 2, 1): fraction past the tap left of / above
    if isinstance(resample, Tensor):  # per image: the weight polynomials of its filter
        coefficients = constant(_CUBIC + _LINEAR, device, torch.float64).view(2, 4, 4)[(resample != BICUBIC).long()]
        power = [coefficients[..., None, None, k, :] for k in range(4)]  # (..., 1, 1, 4) each
    else:
        if resample == NEAREST:  # the nearest tap is a linear one with weights 0 and 1
            d = (d >= 0.5).double()
        table = _CUBIC if resample == BICUBIC else _LINEAR
        power = [constant(table[4 * k : 4 * k + 4], device, torch.float64) for k in range(4)]
    # In double, then rounded once: Horner's rule in float32 would move a weight by more than Pillow's.
    weights = torch.addcmul(power[0], torch.addcmul(power[1], torch.addcmul(power[2], power[3], d), d), d).to(dtype)
    limit = constant((w - 1.0, h - 1.0), device, torch.float64)[:, None]  # (2, 1)
    zero = constant((0.0,), device, torch.float64)
    taps = torch.clamp(base[..., None] + constant((-1.0, 0.0, 1.0, 2.0), device, torch.float64), zero, limit)  # (..., HW, 2, 4)
    index = torch.addcmul(taps[..., 0, None, :], taps[..., 1, :, None], constant((float(w),), device, torch.float64)).flatten(-2).long()  # (..., HW, 16): 4 rows of 4
    return index, weights, inside


def affine_sample(images: Tensor, taps: tuple[Tensor, Tensor, Tensor], resample: int | Tensor, fill: tuple[int, int, int]) -> Tensor:
    """:func:`affine` from :func:`affine_taps`' ``(B, ...)`` taps: one gather, the weighted sums, Geometry.c's rounding."""
    b, c, h, w = images.shape
    index, weights, inside = taps
    values = images.reshape(b, c, h * w).gather(2, index.reshape(b, 1, -1).expand(b, c, -1)).view(b, c, h * w, 16)
    # Along x, then y, as Geometry.c: a flat neighbourhood reads back its exact level more often.
    rows = (values.view(b, c, h * w, 4, 4) * weights[:, None, :, 0, None, :]).sum(-1)  # (B, 3, HW, 4)
    out = (rows * weights[:, None, :, 1, :]).sum(-1)  # (B, 3, HW)
    if isinstance(resample, Tensor) or resample == BICUBIC:  # Geometry.c clips the cubic, then truncates
        out = out.clamp_(0, 255).floor_()
    elif resample == BILINEAR:
        out = out.floor_()
    colour = constant(tuple(float(v) for v in fill), images.device, images.dtype).view(1, 3, 1)
    return torch.where(inside[:, None], out, colour).view(b, c, h, w)


# Tap weights as polynomials in the fraction d, by power (d^0, d^1, d^2, d^3) then tap (-1, 0, 1, 2).
_CUBIC = (0.0, 1.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0, 2.0, -2.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0)  # Geometry.c's a = -1 cubic
_LINEAR = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # 1 - d, d


def _centres(height: int, width: int, device: torch.device) -> Tensor:
    """``(H*W, 2)`` pixel centres ``(x, y)``: made once per size and device, or a constant of a compiled graph."""
    return _make_centres(height, width, device) if torch.compiler.is_compiling() else _cached_centres(height, width, device)


_cached_centres = functools.lru_cache(maxsize=16)(lambda height, width, device: _make_centres(height, width, device))


def _make_centres(height: int, width: int, device: torch.device) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    return (torch.stack([xs.flatten(), ys.flatten()], dim=1) + 0.5).to(device)  # (H*W, 2)


# Resample.c's filters: (support, kernel).
def _triangle(x: Tensor) -> Tensor:
    return (1 - x.abs()).clamp(min=0)


def _pil_cubic(x: Tensor, a: float = -0.5) -> Tensor:
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


_FILTERS = {BILINEAR: (1.0, _triangle), BICUBIC: (2.0, _pil_cubic)}


def _resample_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, code: int) -> Tensor:
    """Resample.c's ``precompute_coeffs`` for a crop ``[start, start + length)`` of each image: ``(B, out, in)``."""
    device = start.device
    scale = length.double() / out_size  # (B,)
    positions = torch.arange(in_size, device=device, dtype=torch.float64)  # (in,)
    centres = (torch.arange(out_size, device=device, dtype=torch.float64) + 0.5)[None] * scale[:, None]  # (B, out)
    if code == NEAREST:  # Image.resize(NEAREST) samples the source pixel under each output centre
        source = (start[:, None] + centres.floor().long()).clamp(max=in_size - 1)  # (B, out)
        return F.one_hot(source, in_size).float()
    support, kernel = _FILTERS[code]
    filterscale = scale.clamp(min=1.0)[:, None, None]  # (B, 1, 1): antialiasing when shrinking
    local = positions[None, None] - start[:, None, None]  # (B, 1, in): position inside the crop
    centres = centres[:, :, None]  # (B, out, 1)
    reach = support * filterscale
    low = torch.trunc(centres - reach + 0.5).clamp(min=0)
    high = torch.minimum(torch.trunc(centres + reach + 0.5), length.double()[:, None, None])
    taps = (local >= low) & (local < high)
    weights = torch.where(taps, kernel((local - centres + 0.5) / filterscale), torch.zeros((), dtype=torch.float64, device=device))
    weights = weights / weights.sum(2, keepdim=True)
    return weights.float()


def resized_crop(images: Tensor, box: Tensor, size: int, resample: int) -> Tensor:
    """torchvision's ``resized_crop`` on PIL: ``image.crop(box).resize((size, size), resample)`` per image.

    Args:
        box: ``(B, 4)`` integer ``(top, left, height, width)`` of each crop.
        resample: NEAREST, BILINEAR or BICUBIC (one for the batch).
    Resample.c resizes rows first, rounding to integers in between; so does this.
    """
    _, _, h, w = images.shape
    top, left, height, width = box.unbind(1)
    across = _resample_weights(left, width, w, size, resample)  # (B, size, W)
    down = _resample_weights(top, height, h, size, resample)  # (B, size, H)
    rows = torch.einsum("bchw,bow->bcho", images, across)  # (B, 3, H, size)
    if resample != NEAREST:
        rows = torch.floor(rows + 0.5).clamp(0, 255)
    out = torch.einsum("bcho,bph->bcpo", rows, down)  # (B, 3, size, size)
    return out if resample == NEAREST else torch.floor(out + 0.5).clamp(0, 255)


def rotation_matrix(degrees: Tensor, width: int, height: int) -> Tensor:
    """``Image.rotate(degrees)``'s inverse affine matrix about the image centre, ``(B, 6)``."""
    angle = -torch.deg2rad(degrees.double())
    cos, sin = torch.round(torch.cos(angle) * 1e15) / 1e15, torch.round(torch.sin(angle) * 1e15) / 1e15
    cx, cy = width / 2, height / 2
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return torch.stack([cos, sin, c, -sin, cos, f], dim=1)


def identity_matrix(count: int, device: torch.device) -> Tensor:
    return constant((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), device, torch.float64).repeat(count, 1)  # (B, 6)


