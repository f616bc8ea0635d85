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
import functools
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

# Columns of a policy's op table, a row per op and one last row that changes nothing: how each op
# draws (every branch of timm's draw as a multiplier: an op's law, floor and sign cost no Python
# branch), then what it sets. The last row sets the identity: a layer an image skips reads it.
_DRAW = ("prob", "gauss", "uniform", "std", "zero", "max", "scale", "floor", "offset", "slope", "flip", "low", "high")
_SETS = ("radians", "e0", "e1", "e2", "e3", "e4", "e5", "f0", "f1", "lut")  # rotate, entries, blend factor, table
_FLAGS = ("grey", "mean", "smooth", "auto_contrast", "equalize")  # a bool table: which degenerate, which histogram op
_COLUMN = {name: i for i, name in enumerate(_DRAW + _SETS)}
_POINT = ("posterize", "solarize", "solarize_add")  # the table's blocks after the identity's: 257 tables each
_LEVELS = 257  # a point op's argument is an integer in [0, 256]


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
        self._tables: dict[tuple[int, int, torch.device], tuple[Tensor, Tensor, Tensor]] = {}

    def tables(self, size: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """The op table ``(ops + 1, columns)`` float64, its flags ``(ops + 1, flags)`` bool, and every
        point op's lookup table at every argument ``(blocks * 257, 256)``, on ``device`` (made once)."""
        key = (*size, device)
        if key not in self._tables:
            rows = [self._row(op, size) for op in self._ops] + [[0.0] * len(_DRAW) + _sets_row(None, size)[0]]
            flags = [_sets_row(_SPECS[op.name][1], size)[1] for op in self._ops] + [[False] * len(_FLAGS)]
            self._tables[key] = (
                torch.tensor(rows, dtype=torch.float64, device=device),
                torch.tensor(flags, dtype=torch.bool, device=device),
                _point_tables().to(device),
            )
        return self._tables[key]

    @staticmethod
    def _row(op: Any, size: tuple[int, int]) -> list[float]:
        level, effect = _SPECS[op.name]
        std, magnitude = float(op.magnitude_std), float(op.magnitude)
        uniform = math.isinf(std)  # timm: uniform(0, m) for an infinite std, else gauss(m, std)
        draw = [
            float(op.prob), 0.0 if uniform else magnitude, magnitude if uniform else 0.0, 0.0 if uniform else std, 0.0,
            float(op.magnitude_max or _LEVEL_DENOM), level.scale_for(op.hparams), -float(level.floor), level.offset,
            level.slope, -2.0 * level.slope if level.negate else 0.0, level.low, level.high,
        ]  # fmt: skip
        return draw + _sets_row(effect, size)[0]

    def draw_layers(self, op: Tensor, valid: Tensor | None, size: tuple[int, int], generator: torch.Generator) -> Params:
        """Per-image parameters of ``L`` layers from the chosen ops ``(B, L)`` (``valid``: a layer to run, None: all)."""
        device = op.device
        table, flag_table, luts = self.tables(size, device)
        t = table[op]  # (B, L, columns)
        col = lambda name: t[..., _COLUMN[name]]  # noqa: E731
        u = torch.rand((*op.shape, 4), generator=generator, device=device, dtype=torch.float64)  # (B, L, 4)
        noise = torch.randn(op.shape, generator=generator, device=device, dtype=torch.float64)
        # timm: skip if prob < 1 and random() > prob; the magnitude is gauss(m, std) or uniform(0, m), in [0, max].
        on = u[..., 0] <= col("prob")
        on = on if valid is None else on & valid
        m = torch.addcmul(torch.addcmul(col("gauss"), col("std"), noise), u[..., 3], col("uniform"))
        value = m.clamp(col("zero"), col("max")) / _LEVEL_DENOM * col("scale")
        value = torch.addcmul(value, value.frac(), col("floor"))  # v - frac(v) = floor(v) for v >= 0, where it floors
        slope = torch.addcmul(col("slope"), u[..., 1] > 0.5, col("flip"))  # -slope at random, where it negates
        arg = torch.addcmul(col("offset"), slope, value).clamp(col("low"), col("high"))  # (B, L)
        applied = torch.where(on, op, len(self._ops))  # the last row: the identity
        sets = table[applied, len(_DRAW) :]  # (B, L, len(_SETS))
        # Which row of the point tables: a (B, L) index, small enough to draw for a whole epoch; the layers read the rows.
        lut = (sets[..., _SETS.index("lut")] + arg.clamp(0.0, _LEVELS - 1)).long()
        params = {**_layer_params(sets, flag_table[applied], arg, size), "lut": lut, "op": op, "on": on, "arg": arg}
        if isinstance(self.resample, tuple):  # timm's random.choice of (BILINEAR, BICUBIC) per call, per image here
            params["bicubic"] = u[..., 2] >= 0.5
        return params

    def apply(self, images: Tensor, params: Params) -> Tensor:
        luts = self.tables((images.shape[2], images.shape[3]), images.device)[2]
        return apply_layers(images, {**params, "table": luts[params["lut"]]}, self.resample, self.fill)  # (B, L, 256)


@functools.lru_cache(maxsize=1)
def _point_tables() -> Tensor:
    """Every parametric point op's lookup table at every integer argument, ``(4 * 257, 256)``: the
    identity, then posterize (bits), solarize (threshold), solarize_add (addend), 257 arguments each."""
    args = torch.arange(_LEVELS, dtype=torch.float64)
    ones, top, zero = torch.ones(_LEVELS, dtype=torch.float64), torch.full((_LEVELS,), 256.0, dtype=torch.float64), torch.zeros(_LEVELS, dtype=torch.float64)
    blocks = [
        P.pixel_table(ones, top, zero),
        P.pixel_table(torch.exp2(8.0 - args.clamp(0.0, 8.0)), top, zero),  # posterize keeps the top bits
        P.pixel_table(ones, args, zero),
        P.pixel_table(ones, top, args),
    ]
    return torch.cat(blocks)


def _layer_params(sets: Tensor, flags: Tensor, arg: Tensor, size: tuple[int, int]) -> Params:
    """What each image's op sets, ``(B, L, ...)``, from its ``sets`` and ``flags`` rows (the last
    table row's for the identity) and its argument; its point op's lookup table is apart."""
    flag = lambda name: flags[..., _FLAGS.index(name)]  # noqa: E731
    trig = _rounded_trig(arg * sets[..., 0])  # (B, L, 2): cos and sin of the rotation; 1 and 0 for every other op
    rotation = (trig[..., None] * P.constant(_rotation_rows(size), arg.device, torch.float64).view(2, 6)).sum(-2)
    translation = P.constant((0.0, 0.0, size[1] / 2, 0.0, 0.0, size[0] / 2), arg.device, torch.float64)
    return {
        # Image.rotate's cos * -cx + sin * -cy + cx, as Pillow adds; then the shear and translation entries
        "matrix": torch.addcmul(rotation + translation, sets[..., 1:7], arg[..., None]),  # (B, L, 6)
        "factor": torch.addcmul(sets[..., 7], arg, sets[..., 8]).float(),  # 1, the argument, or 1 - the argument
        "degenerate": flags[..., :3],  # (B, L, 3): grey, mean, smooth
        "auto_contrast": flag("auto_contrast"),
        "equalize": flag("equalize"),
    }


def apply_layers(images: Tensor, params: Params, resample: int | tuple[int, ...], fill: tuple[int, int, int]) -> Tensor:
    pick: int | Tensor = resample if isinstance(resample, int) else torch.where(params["bicubic"], P.BICUBIC, P.BILINEAR)
    # Where every layer's resample reads, made once for all layers (B, L, ...): a layer only gathers and sums.
    taps = P.affine_taps(params["matrix"], (images.shape[2], images.shape[3]), pick, images.dtype)
    for layer in range(params["matrix"].shape[1]):
        p = {key: value[:, layer] for key, value in params.items() if value.ndim > 1}
        layer_pick = pick if isinstance(pick, int) else pick[:, layer]
        images = _layer(images, p, tuple(t[:, layer] for t in taps), layer_pick, fill)  # type: ignore[arg-type]
    return images


def _layer(images: Tensor, p: Params, taps: tuple[Tensor, Tensor, Tensor], pick: int | Tensor, fill: tuple[int, int, int]) -> Tensor:
    """One layer: one resample, one blend, one lookup table, each the identity for the images whose op is elsewhere."""
    identity = P.constant((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), images.device, torch.float64)
    images = _where_changed(
        images, lambda: (p["matrix"] != identity).any(1),
        lambda x, i: P.affine_sample(x, tuple(t[i] for t in taps), pick if isinstance(pick, int) else pick[i], fill),  # type: ignore[arg-type]
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


def _sets_row(effect: _Effect | None, size: tuple[int, int]) -> tuple[list[float], list[bool]]:
    """The table's ``_SETS`` columns and flags for an op (None: the identity): the radians per degree
    for a rotation, 1 for a matrix entry it sets (a side length for relative translations), the blend
    factor as ``f0 + f1 * arg``, its point op's first table row; and which degenerate or histogram op."""
    sets = dict.fromkeys(_SETS, 0.0) | {"f0": 1.0}
    flags = dict.fromkeys(_FLAGS, False)
    if effect is None:
        pass
    elif effect.kind == "rotate":
        sets["radians"] = -math.pi / 180  # Image.rotate turns by -deg2rad(degrees)
    elif effect.kind == "affine":
        sets[f"e{effect.entry}"] = {"width": size[1], "height": size[0], None: 1}[effect.scale_by]
    elif effect.kind == "blend":
        sets["f0"], sets["f1"] = (1.0, -1.0) if effect.complement else (0.0, 1.0)
        if effect.degenerate != "black":
            flags[effect.degenerate] = True
    elif effect.kind in _POINT:
        sets["lut"] = float(_LEVELS * (1 + _POINT.index(effect.kind)))
    else:
        flags[effect.kind] = True
    return [sets[name] for name in _SETS], [flags[name] for name in _FLAGS]


def _resample(op: Any) -> int | tuple[int, ...]:
    resample = op.kwargs["resample"]  # a PIL code, or a tuple timm picks from at random per call
    return tuple(int(r) for r in resample) if isinstance(resample, (tuple, list)) else int(resample)


def _rounded_trig(radians: Tensor) -> Tensor:
    """``(..., 2)``: cos and sin, rounded to 15 decimals as Pillow's ``rotate`` rounds them (a flat
    region then reads back its exact level); 0 radians gives 1 and 0, the identity."""
    trig = torch.view_as_real(torch.polar(P.constant((1.0,), radians.device, torch.float64), radians))
    return trig.mul(1e15).round_().div_(1e15)


def _rotation_rows(size: tuple[int, int]) -> tuple[float, ...]:
    """What cos and sin multiply in Image.rotate's inverse matrix about the centre ``(cx, cy)``:
    ``(cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy)``."""
    cx, cy = size[1] / 2, size[0] / 2
    return (1.0, 0.0, -cx, 0.0, 1.0, -cy) + (0.0, 1.0, -cy, -1.0, 0.0, cx)


def _single(name: str) -> Callable[..., Tensor]:
    """Op ``name`` with the given arguments ``(B,)`` on every image, through the layer machinery (tests compare it with timm)."""
    level, effect = _SPECS[name]

    def fn(images: Tensor, args: Tensor, resample: int | Tensor = P.BICUBIC, fill: tuple[int, int, int] = (0, 0, 0)) -> Tensor:
        size = (images.shape[2], images.shape[3])
        sets, flags = _sets_row(effect, size)
        sets_rows = torch.tensor(sets, dtype=torch.float64, device=images.device).expand(len(images), 1, -1)
        flag_rows = torch.tensor(flags, device=images.device).expand(len(images), 1, -1)
        arg = (torch.zeros(len(images), 1, dtype=torch.float64) if level is _NONE else args.double()[:, None]).to(images.device)
        block = int(sets[_SETS.index("lut")]) // _LEVELS
        table = P.pixel_table(
            torch.exp2(8.0 - arg.clamp(0.0, 8.0)) if block == 1 else torch.ones_like(arg),
            arg if block == 2 else torch.full_like(arg, 256.0),
            arg if block == 3 else torch.zeros_like(arg),
        )  # (B, 1, 256)
        params = {**_layer_params(sets_rows, flag_rows, arg, size), "table": table}
        if isinstance(resample, Tensor):
            params["bicubic"] = (resample == P.BICUBIC)[:, None]
        return apply_layers(images, params, (P.BILINEAR, P.BICUBIC) if isinstance(resample, Tensor) else resample, fill)

    return fn


# Op name -> (level function, image function, geometric), for the tests that compare each op with timm's.
OPS: dict[str, tuple[Level, Callable[..., Tensor], bool]] = {
    name: (level, _single(name), effect.kind in ("rotate", "affine")) for name, (level, effect) in _SPECS.items()
}
