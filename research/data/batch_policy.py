"""timm's RandAugment / AutoAugment ops as tables, and their layers on whole batches.

A policy's ops (timm ``AugmentOp`` objects) become one float64 table, a row per op: how it draws
(probability, magnitude law, timm's level function as numbers, :class:`Level`) and what it sets.
:meth:`Policy.draw_layers` turns each image's op choices ``(B, L)`` into per-image, per-layer
parameters; :func:`apply_layers` runs the ``L`` layers, each one affine resample, one blend and one
lookup table (:mod:`pil_ops`), each the identity for the images whose op is elsewhere. The
techniques that use this are in :mod:`research.data.batch_ops`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from research.data import pil_ops as P

__all__ = ["Level", "NotBatchable", "OPS", "Params", "Policy", "whole_batches"]

_LEVEL_DENOM = 10.0  # timm's magnitude scale: level / 10 is the fraction of an op's range
Params = dict[str, Tensor]


class NotBatchable(ValueError):
    """A technique or op with no whole-batch version; the message names it and says what to do."""


def _negate(values: Tensor, generator: torch.Generator) -> Tensor:
    """timm's ``_randomly_negate``: ``-v if random() > 0.5 else v``, per image."""
    coin = torch.rand(values.shape, generator=generator, device=values.device, dtype=torch.float64)
    return torch.where(coin > 0.5, -values, values)


@dataclass(frozen=True)
class Level:
    """timm's ``LEVEL_TO_ARG`` for one op, as numbers: ``clamp(offset + slope * s * q(m / 10 * scale), low, high)``
    with ``q`` = floor when ``floor``, ``s`` = -1 or 1 at random when ``negate`` (else 1)."""

    scale: float | str = 0.0  # or the hparams key holding it (translate_const, translate_pct)
    offset: float = 0.0
    slope: float = 1.0
    negate: bool = False
    floor: bool = False
    low: float = -math.inf
    high: float = math.inf

    def scale_for(self, hparams: dict[str, Any]) -> float:
        if self.scale == "translate_pct":
            return float(hparams.get("translate_pct", 0.45))
        return float(hparams[self.scale]) if isinstance(self.scale, str) else self.scale

    def __call__(self, m: Tensor, hparams: dict[str, Any], generator: torch.Generator) -> Tensor:
        """The level function on its own (``(B,)`` magnitudes), as :meth:`_Policy.draw` computes it."""
        value = m / _LEVEL_DENOM * self.scale_for(hparams)
        value = value.floor() if self.floor else value
        value = _negate(value, generator) if self.negate else value
        return (self.offset + self.slope * value).clamp(self.low, self.high)


# What an op does with its argument: which of the layer's per-image parameters it sets.
# geometric: matrix entry it sets (1: shear x, 3: shear y, 2 / 5: translate x / y) or -1 (rotate),
# and the image side the argument is scaled by; blend: its degenerate image; point: its table.
@dataclass(frozen=True)
class _Effect:
    kind: str  # rotate, affine, blend, posterize, solarize, solarize_add, auto_contrast, equalize
    entry: int = 0
    scale_by: str | None = None  # width or height (relative translations)
    degenerate: str = "black"  # black, grey, mean, smooth
    complement: bool = False  # the blend factor is 1 - the argument (timm's Desaturate)


_NONE = Level()  # ops without an argument (AutoContrast, Equalize, Invert: solarize at 0)
_ENHANCE = Level(1.8, offset=0.1)
_ENHANCE_INCREASING = Level(0.9, offset=1.0, negate=True, low=0.1)

_SPECS: dict[str, tuple[Level, _Effect]] = {
    "AutoContrast": (_NONE, _Effect("auto_contrast")),
    "Equalize": (_NONE, _Effect("equalize")),
    "Invert": (_NONE, _Effect("solarize")),  # every pixel at or above 0 inverted
    "Rotate": (Level(30.0, negate=True), _Effect("rotate")),
    "Posterize": (Level(4.0, floor=True), _Effect("posterize")),
    "PosterizeIncreasing": (Level(4.0, offset=4.0, slope=-1.0, floor=True), _Effect("posterize")),
    "PosterizeOriginal": (Level(4.0, offset=4.0, floor=True), _Effect("posterize")),
    "Solarize": (Level(256.0, floor=True, high=256.0), _Effect("solarize")),
    "SolarizeIncreasing": (Level(256.0, offset=256.0, slope=-1.0, floor=True, low=0.0), _Effect("solarize")),
    "SolarizeAdd": (Level(110.0, floor=True, high=128.0), _Effect("solarize_add")),
    "Color": (_ENHANCE, _Effect("blend", degenerate="grey")),
    "ColorIncreasing": (_ENHANCE_INCREASING, _Effect("blend", degenerate="grey")),
    "Contrast": (_ENHANCE, _Effect("blend", degenerate="mean")),
    "ContrastIncreasing": (_ENHANCE_INCREASING, _Effect("blend", degenerate="mean")),
    "Brightness": (_ENHANCE, _Effect("blend")),
    "BrightnessIncreasing": (_ENHANCE_INCREASING, _Effect("blend")),
    "Sharpness": (_ENHANCE, _Effect("blend", degenerate="smooth")),
    "SharpnessIncreasing": (_ENHANCE_INCREASING, _Effect("blend", degenerate="smooth")),
    "ShearX": (Level(0.3, negate=True), _Effect("affine", 1)),
    "ShearY": (Level(0.3, negate=True), _Effect("affine", 3)),
    "TranslateX": (Level("translate_const", negate=True), _Effect("affine", 2)),
    "TranslateY": (Level("translate_const", negate=True), _Effect("affine", 5)),
    "TranslateXRel": (Level("translate_pct", negate=True), _Effect("affine", 2, "width")),
    "TranslateYRel": (Level("translate_pct", negate=True), _Effect("affine", 5, "height")),
    "Desaturate": (Level(0.5, offset=0.5, low=0.5, high=1.0), _Effect("blend", degenerate="grey", complement=True)),
}

# Columns of a policy's op table: how each op draws, then what it sets (one-hot / multipliers).
_DRAW = ("prob", "magnitude", "std", "uniform", "max", "scale", "offset", "slope", "negate", "floor", "low", "high")
_SETS = ("rotate", "e0", "e1", "e2", "e3", "e4", "e5", "blend", "grey", "mean", "smooth",
         "posterize", "solarize", "solarize_add", "auto_contrast", "equalize", "complement")  # fmt: skip
_COLUMN = {name: i for i, name in enumerate(_DRAW + _SETS)}
_DEGENERATES = ("grey", "mean", "smooth")


class Policy:
    """timm ``AugmentOp``s as a table, and the layers of a policy drawn and applied from it.

    ``draw_layers`` turns per-image op choices ``(B, L)`` into per-image, per-layer parameters;
    ``apply`` runs the ``L`` layers, each one resample, one blend and one lookup table.
    """

    def __init__(self, timm_ops: Sequence[Any]) -> None:
        for op in timm_ops:
            if op.name not in _SPECS:
                raise NotBatchable(f"timm op {op.name!r} has no whole-batch version (batched: {', '.join(OPS)})")
        self.names = [op.name for op in timm_ops]
        self._ops = list(timm_ops)
        resamples = {_resample(op) for op in timm_ops}
        if any(isinstance(r, tuple) and r != (P.BILINEAR, P.BICUBIC) for r in resamples):
            raise NotBatchable(f"a random interpolation other than timm's (bilinear, bicubic): {resamples}")
        fills = {tuple(int(c) for c in op.kwargs["fillcolor"]) for op in timm_ops}
        if len(resamples) > 1 or len(fills) > 1:  # timm builds a policy's ops from one hparams dict
            raise NotBatchable(f"a policy whose ops resample differently ({resamples}, fill {fills})")
        self.resample, self.fill = resamples.pop(), fills.pop()
        self._tables: dict[tuple[int, int, torch.device], Tensor] = {}

    def table(self, size: tuple[int, int], device: torch.device) -> Tensor:
        """``(ops, columns)`` float64 on ``device``, for ``(height, width)`` images (made once)."""
        key = (*size, device)
        if key not in self._tables:
            self._tables[key] = torch.tensor([self._row(op, size) for op in self._ops], dtype=torch.float64, device=device)
        return self._tables[key]

    @staticmethod
    def _row(op: Any, size: tuple[int, int]) -> list[float]:
        level, effect = _SPECS[op.name]
        std = float(op.magnitude_std)
        draw = [
            float(op.prob), float(op.magnitude), 0.0 if math.isinf(std) else std, float(math.isinf(std)),
            float(op.magnitude_max or _LEVEL_DENOM), level.scale_for(op.hparams), level.offset, level.slope,
            float(level.negate), float(level.floor), level.low, level.high,
        ]  # fmt: skip
        return draw + _sets_row(effect, size)

    def draw_layers(self, op: Tensor, valid: Tensor, size: tuple[int, int], generator: torch.Generator) -> Params:
        """Per-image parameters of ``L`` layers from the chosen ops ``(B, L)`` (``valid``: a layer to run)."""
        device = op.device
        t = self.table(size, device)[op]  # (B, L, columns)
        col = lambda name: t[..., _COLUMN[name]]  # noqa: E731
        u = torch.rand((*op.shape, 4), generator=generator, device=device, dtype=torch.float64)  # (B, L, 4)
        noise = torch.randn(op.shape, generator=generator, device=device, dtype=torch.float64)
        # timm: skip if prob < 1 and random() > prob; the magnitude is gauss(m, std) or uniform(0, m), in [0, max].
        on = (u[..., 0] <= col("prob")) & valid
        m = torch.where(col("uniform") > 0, u[..., 3] * col("magnitude"), torch.addcmul(col("magnitude"), col("std"), noise))
        m = torch.minimum(m.clamp(min=0.0), col("max"))
        value = m / _LEVEL_DENOM * col("scale")
        value = torch.where(col("floor") > 0, value.floor(), value)
        value = torch.where((u[..., 1] > 0.5) & (col("negate") > 0), -value, value)
        arg = torch.clamp(torch.addcmul(col("offset"), col("slope"), value), col("low"), col("high"))  # (B, L)
        sets = t[..., len(_DRAW) :] * on[..., None]  # (B, L, len(_SETS)): zero where the layer does nothing
        params = {**_layer_params(sets, arg, size), "op": op, "on": on, "arg": arg}
        if isinstance(self.resample, tuple):  # timm's random.choice of (BILINEAR, BICUBIC) per call, per image here
            params["bicubic"] = u[..., 2] >= 0.5
        return params

    def apply(self, images: Tensor, params: Params) -> Tensor:
        return apply_layers(images, params, self.resample, self.fill)


def _layer_params(sets: Tensor, arg: Tensor, size: tuple[int, int]) -> Params:
    """What each image's op sets, ``(B, L, ...)``, each the identity where ``sets`` is zero."""
    flags = sets > 0
    flag = lambda name: flags[..., _SETS.index(name)]  # noqa: E731
    entries = sets[..., 1:7] * arg[..., None]  # (B, L, 6): shear and translation entries
    bits = arg.clamp(0.0, 8.0)
    return {
        "matrix": _rotation(arg * sets[..., 0], size) + entries,  # (B, L, 6)
        "factor": torch.where(flag("blend"), torch.where(flag("complement"), 1.0 - arg, arg), 1.0).float(),
        "degenerate": flags[..., [_SETS.index(d) for d in _DEGENERATES]],  # (B, L, 3): grey, mean, smooth
        "table": P.pixel_table(
            torch.where(flag("posterize"), torch.exp2(8.0 - bits), 1.0),  # posterize keeps the top bits
            torch.where(flag("solarize"), arg, 256.0),
            arg * sets[..., _SETS.index("solarize_add")],
        ),  # (B, L, 256)
        "auto_contrast": flag("auto_contrast"),
        "equalize": flag("equalize"),
    }


def apply_layers(images: Tensor, params: Params, resample: int | tuple[int, ...], fill: tuple[int, int, int]) -> Tensor:
    for layer in range(params["matrix"].shape[1]):
        images = _layer(images, {key: value[:, layer] for key, value in params.items() if value.ndim > 1}, resample, fill)
    return images


def _layer(images: Tensor, p: Params, resample: int | tuple[int, ...], fill: tuple[int, int, int]) -> Tensor:
    """One layer: one resample, one blend, one lookup table, each the identity for the images whose op is elsewhere."""
    pick: int | Tensor = resample if isinstance(resample, int) else torch.where(p["bicubic"], P.BICUBIC, P.BILINEAR)
    identity = P.constant((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), images.device, torch.float64)
    images = _where_changed(
        images, lambda: (p["matrix"] != identity).any(1),
        lambda x, i: P.affine(x, p["matrix"][i], pick if isinstance(pick, int) else pick[i], fill),
    )  # fmt: skip
    images = _where_changed(
        images, lambda: p["factor"] != 1, lambda x, i: P.blend_degenerate(x, p["factor"][i], *p["degenerate"][i].unbind(1))
    )
    levels = P.constant(tuple(range(256)), images.device, torch.float64)
    return _where_changed(
        images, lambda: (p["table"] != levels).any(1) | p["auto_contrast"] | p["equalize"],
        lambda x, i: P.point_ops(x, p["table"][i], p["auto_contrast"][i], p["equalize"][i]),
    )  # fmt: skip


_subsets = [True]  # eager CPU runs an op on the images it changes; whole_batches() turns that off


@contextlib.contextmanager
def whole_batches() -> Iterator[None]:
    """Run every op on the whole batch on the CPU too, as on a device (bench/launches.py counts that way)."""
    _subsets[0] = False
    try:
        yield
    finally:
        _subsets[0] = True


def _where_changed(images: Tensor, changes: Callable[[], Tensor], fn: Callable[[Tensor, Tensor | slice], Tensor]) -> Tensor:
    """``fn(images, index)``, an op that leaves unchanged the images ``changes()`` does not name.

    On a device, or compiled, it runs on the whole batch: no host sync, one graph. In eager on the
    CPU, where finding the subset is free, it runs on the images it changes only (7x less work).
    """
    if images.device.type != "cpu" or torch.compiler.is_compiling() or not _subsets[0]:
        return fn(images, slice(None))
    rows = changes().nonzero().squeeze(1)
    return images.index_copy(0, rows, fn(images[rows], rows)) if len(rows) else images


def _sets_row(effect: _Effect, size: tuple[int, int]) -> list[float]:
    """The table's ``_SETS`` columns for an op: 1 for what it sets (a side length for relative translations)."""
    sets = dict.fromkeys(_SETS, 0.0)
    if effect.kind == "affine":
        sets[f"e{effect.entry}"] = {"width": size[1], "height": size[0], None: 1}[effect.scale_by]
    else:
        sets[effect.kind] = 1.0
    if effect.kind == "blend" and effect.degenerate != "black":
        sets[effect.degenerate] = 1.0
    sets["complement"] = float(effect.complement)
    return [sets[name] for name in _SETS]


def _resample(op: Any) -> int | tuple[int, ...]:
    resample = op.kwargs["resample"]  # a PIL code, or a tuple timm picks from at random per call
    return tuple(int(r) for r in resample) if isinstance(resample, (tuple, list)) else int(resample)


def _rotation(degrees: Tensor, size: tuple[int, int]) -> Tensor:
    """``Image.rotate(degrees)``'s inverse affine matrix about the centre, ``(..., 6)``; 0 degrees is the identity.

    """
    angle = -torch.deg2rad(degrees)
    # Pillow rounds cos and sin to 15 decimals: a flat region then reads back its exact level.
    cos, sin = torch.cos(angle).mul_(1e15).round_().div_(1e15), torch.sin(angle).mul_(1e15).round_().div_(1e15)
    cx, cy = size[1] / 2, size[0] / 2
    c = cx - (cos * cx).add_(sin, alpha=cy)  # cos * -cx + sin * -cy + cx
    f = (sin * cx).sub_(cos, alpha=cy) + cy  # -sin * -cx + cos * -cy + cy
    return torch.stack([cos, sin, c, -sin, cos, f], dim=-1)


def _single(name: str) -> Callable[..., Tensor]:
    """Op ``name`` with the given arguments ``(B,)`` on every image, through the layer machinery (tests compare it with timm)."""
    level, effect = _SPECS[name]

    def fn(images: Tensor, args: Tensor, resample: int | Tensor = P.BICUBIC, fill: tuple[int, int, int] = (0, 0, 0)) -> Tensor:
        size = (images.shape[2], images.shape[3])
        row = torch.tensor(_sets_row(effect, size), dtype=torch.float64, device=images.device).expand(len(images), 1, -1)
        arg = torch.zeros(len(images), 1, dtype=torch.float64) if level is _NONE else args.double()[:, None]
        params = _layer_params(row, arg.to(images.device), size)
        if isinstance(resample, Tensor):
            params["bicubic"] = (resample == P.BICUBIC)[:, None]
        return apply_layers(images, params, (P.BILINEAR, P.BICUBIC) if isinstance(resample, Tensor) else resample, fill)

    return fn


# Op name -> (level function, image function, geometric), for the tests that compare each op with timm's.
OPS: dict[str, tuple[Level, Callable[..., Tensor], bool]] = {
    name: (level, _single(name), effect.kind in ("rotate", "affine")) for name, (level, effect) in _SPECS.items()
}
