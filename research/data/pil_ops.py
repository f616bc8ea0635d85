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

__all__ = [
    "affine",
    "auto_contrast",
    "blend",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "grayscale",
    "invert",
    "posterize",
    "resized_crop",
    "sharpness",
    "solarize",
    "solarize_add",
]

NEAREST, BILINEAR, BICUBIC = 0, 2, 3  # PIL's resample codes


@functools.lru_cache(maxsize=64)
def constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small constant tensor made once per device: a copy from the host each batch would make it wait."""
    return torch.tensor(values, device=device, dtype=dtype)


def _column(values: Tensor) -> Tensor:
    return values.reshape(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)


def blend(degenerate: Tensor, images: Tensor, factor: Tensor) -> Tensor:
    """``Image.blend(degenerate, image, factor)``: Blend.c clips to [0, 255], then truncates."""
    mixed = degenerate + _column(factor).float() * (images - degenerate)
    return mixed.clamp(0, 255).floor()


def grayscale(images: Tensor) -> Tensor:
    """``convert("L")``: ITU-R 601-2 luma in Convert.c's fixed point, ``(B, 1, H, W)``."""
    rgb = images.to(torch.int32)
    luma = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16
    return luma[:, None].to(images.dtype)


def color(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Color`` (torchvision's saturation on PIL): blend with the grey image."""
    return blend(grayscale(images).expand_as(images), images, factor)


def contrast(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Contrast``: blend with a flat image of the rounded mean grey level."""
    mean = torch.floor(grayscale(images).mean(dim=(1, 2, 3), dtype=torch.float64) + 0.5)  # (B,)
    return blend(_column(mean).to(images.dtype).expand_as(images), images, factor)


def brightness(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return blend(torch.zeros_like(images), images, factor)


# ImageFilter.SMOOTH, the degenerate image of ImageEnhance.Sharpness.
_SMOOTH = (1.0, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0, 1.0)


def sharpness(images: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image (its border pixels unfiltered)."""
    kernel = (constant(_SMOOTH, images.device, images.dtype) / 13.0).view(1, 1, 3, 3).expand(3, 1, 3, 3)
    inner = F.conv2d(images, kernel, groups=3)  # (B, 3, H-2, W-2)
    smooth = images.clone()
    smooth[:, :, 1:-1, 1:-1] = torch.floor(inner + 0.5).clamp(0, 255)  # Filter.c rounds
    return blend(smooth, images, factor)


def invert(images: Tensor) -> Tensor:
    return 255.0 - images


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """``ImageOps.posterize``: keep the top ``bits`` bits (timm skips 8 bits or more: no-op)."""
    keep = bits.clamp(0, 8).to(torch.int32)
    mask = _column(255 - ((1 << (8 - keep)) - 1))  # ~(2**(8 - bits) - 1) within a byte
    return (images.to(torch.int32) & mask).to(images.dtype)


def solarize(images: Tensor, threshold: Tensor) -> Tensor:
    """``ImageOps.solarize``: invert the pixels at or above ``threshold``."""
    return torch.where(images < _column(threshold).to(images.dtype), images, 255.0 - images)


def solarize_add(images: Tensor, add: Tensor, threshold: float = 128.0) -> Tensor:
    """timm's ``solarize_add``: add ``add`` (capped at 255) to the pixels below ``threshold``."""
    return torch.where(images < threshold, (images + _column(add).to(images.dtype)).clamp(max=255), images)


def _histograms(images: Tensor) -> Tensor:
    """Per image and channel, ``(B, 3, 256)`` counts."""
    b, c = images.shape[:2]
    levels = images.reshape(b * c, -1).long()  # (B*3, H*W)
    counts = torch.zeros(b * c, 256, device=images.device, dtype=torch.long)
    counts.scatter_add_(1, levels, torch.ones_like(levels))
    return counts.reshape(b, c, 256)


def _apply_lut(images: Tensor, lut: Tensor) -> Tensor:
    b, c = images.shape[:2]
    flat = images.reshape(b, c, -1).long()  # (B, 3, H*W)
    return lut.gather(2, flat).reshape(images.shape).to(images.dtype)


def auto_contrast(images: Tensor) -> Tensor:
    """``ImageOps.autocontrast`` (cutoff 0): stretch each channel's [min, max] to [0, 255]."""
    low = images.amin(dim=(2, 3), keepdim=True)  # (B, 3, 1, 1)
    high = images.amax(dim=(2, 3), keepdim=True)
    scale = 255.0 / (high - low).clamp(min=1)
    # ImageOps builds its table with int(ix * scale + offset), which truncates toward zero.
    stretched = torch.trunc(images.double() * scale - low * scale).clamp(0, 255).to(images.dtype)
    return torch.where(high > low, stretched, images)


def equalize(images: Tensor) -> Tensor:
    """``ImageOps.equalize``: each channel's histogram flattened with ImageOps' integer step."""
    counts = _histograms(images)  # (B, 3, 256)
    levels = torch.arange(256, device=images.device)
    last = torch.where(counts > 0, levels, -1).amax(dim=2, keepdim=True)  # (B, 3, 1): the last non-empty bin
    step = (counts.sum(2, keepdim=True) - counts.gather(2, last.clamp(min=0))) // 255
    before = counts.cumsum(2) - counts  # (B, 3, 256): pixels below each level
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp(max=255)
    # A channel with a single level, or fewer than 255 pixels outside its top level, is left as is.
    lut = torch.where(step > 0, lut, levels)
    return _apply_lut(images, lut)


def affine(images: Tensor, matrix: Tensor, resample: int | Tensor, fill: tuple[int, int, int]) -> Tensor:
    """``Image.transform(size, AFFINE, matrix, resample, fillcolor=fill)`` for each image.

    Args:
        matrix: ``(B, 6)``: output pixel centre ``(x, y)`` maps to input ``(a x + b y + c, d x + e y + f)``.
        resample: PIL code NEAREST (0), BILINEAR (2) or BICUBIC (3), or a ``(B,)`` tensor of BILINEAR /
            BICUBIC per image (timm's random interpolation: both are computed, no host sync).
        fill: The colour of the pixels whose source lies outside the image.
    """
    b, _, h, w = images.shape
    dtype = torch.float64  # Geometry.c computes the coordinates in double
    ys, xs = torch.meshgrid(
        torch.arange(h, device=images.device, dtype=dtype) + 0.5,
        torch.arange(w, device=images.device, dtype=dtype) + 0.5,
        indexing="ij",
    )  # (H, W) pixel centres
    m = matrix.to(dtype)[:, :, None, None]  # (B, 6, 1, 1)
    x_in = m[:, 0] * xs + m[:, 1] * ys + m[:, 2]  # (B, H, W)
    y_in = m[:, 3] * xs + m[:, 4] * ys + m[:, 5]
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    if isinstance(resample, Tensor):
        bicubic = (resample == BICUBIC)[:, None, None, None]
        out = torch.where(bicubic, _bicubic(images, x_in, y_in), _bilinear(images, x_in, y_in))
    else:
        out = _SAMPLERS[resample](images, x_in, y_in)
    colour = constant(tuple(float(c) for c in fill), images.device, images.dtype).view(1, 3, 1, 1)
    return torch.where(inside[:, None], out, colour)


def _taps(coordinate: Tensor, offsets: range, size: int) -> list[Tensor]:
    """Integer source positions ``floor(coordinate) + k`` clamped to the image (Geometry.c's XCLIP/YCLIP)."""
    base = coordinate.floor().long()
    return [(base + k).clamp_(0, size - 1) for k in offsets]


def _sample(images: Tensor, rows: list[Tensor], cols: list[Tensor], wy: list[Tensor], wx: list[Tensor]) -> Tensor:
    """``sum_ij wy[i] wx[j] images[b, :, rows[i], cols[j]]`` for ``(B, H, W)`` tap maps and weights."""
    b, c, h, w = images.shape
    flat = images.reshape(b, c, h * w)
    out = None
    for row, weight_y in zip(rows, wy):
        line = None
        for col, weight_x in zip(cols, wx):
            index = (row * w + col).reshape(b, 1, -1).expand(b, c, -1)
            value = flat.gather(2, index).reshape(b, c, *row.shape[1:]) * weight_x
            line = value if line is None else line + value
        assert line is not None
        term = line * weight_y
        out = term if out is None else out + term
    assert out is not None
    return out


def _nearest(images: Tensor, x_in: Tensor, y_in: Tensor) -> Tensor:
    _, _, h, w = images.shape
    one = torch.ones((), dtype=images.dtype, device=images.device)
    return _sample(images, _taps(y_in, range(1), h), _taps(x_in, range(1), w), [one], [one])


def _bilinear(images: Tensor, x_in: Tensor, y_in: Tensor) -> Tensor:
    _, _, h, w = images.shape
    x, y = x_in - 0.5, y_in - 0.5
    dx, dy = (x - x.floor())[:, None].to(images.dtype), (y - y.floor())[:, None].to(images.dtype)  # (B, 1, H, W)
    out = _sample(images, _taps(y, range(2), h), _taps(x, range(2), w), [1 - dy, dy], [1 - dx, dx])
    return out.floor_()  # Geometry.c truncates


def _cubic_weights(d: Tensor) -> list[Tensor]:
    """Geometry.c's BICUBIC macro (the a = -1 cubic) as weights of the four taps."""
    d2, d3 = d * d, d * d * d
    return [-d + 2 * d2 - d3, 1 - 2 * d2 + d3, d + d2 - d3, -d2 + d3]


def _bicubic(images: Tensor, x_in: Tensor, y_in: Tensor) -> Tensor:
    _, _, h, w = images.shape
    x, y = x_in - 0.5, y_in - 0.5
    wx = _cubic_weights((x - x.floor())[:, None].to(images.dtype))
    wy = _cubic_weights((y - y.floor())[:, None].to(images.dtype))
    out = _sample(images, _taps(y, range(-1, 3), h), _taps(x, range(-1, 3), w), wy, wx)
    return out.clamp_(0, 255).floor_()


_SAMPLERS = {NEAREST: _nearest, BILINEAR: _bilinear, BICUBIC: _bicubic}


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


