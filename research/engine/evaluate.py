"""Top-1 / top-5 evaluation, summed over every rank."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from research.engine.state import unwrap

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """Mixed-precision context for ``precision`` (fp32 = no autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def eval_views(options: Any) -> dict[str, Any]:
    """:func:`evaluate`'s test-time views that a run's ``train:`` options (``eval_hflip``, ``eval_translate``) ask for."""
    return {"hflip": options.eval_hflip, "translate": options.eval_translate}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    precision: str = "fp32",
    *,
    hflip: bool = False,
    translate: int = 0,
) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 accuracy (in %) of ``model`` over ``loader``.

    For a model with a distillation token (one that has ``forward_heads`` and ``eval_heads``), the
    top-1 of each way to predict is added from the same forward pass: ``top1_class``, ``top1_distillation`` and
    ``top1_both`` (the paper's Table 3 columns); ``top1`` is that of the model's ``eval_head``.
    With ``hflip``, every metric is of the logits averaged over each image and its mirror (the
    flip test-time augmentation of fast CIFAR training), and ``top1_single_view`` keeps the top-1
    of the unflipped images alone. With ``translate`` = t, the logits of the image (or of the pair)
    get weight 1/2, and those of the image shifted t pixels along its diagonal, one way and the
    other (reflect padded; each with its mirror under ``hflip``), 1/4 each: airbench's multi-crop test-time
    augmentation at t = 1. Each rank evaluates its own shard; sums are all-reduced, so every rank
    returns the totals.
    """
    if translate < 0:
        raise ValueError(f"translate is a number of pixels >= 0, got {translate}")
    was_training = model.training
    model.eval()
    plain = unwrap(model)
    heads = tuple(getattr(plain, "eval_heads", ())) if hasattr(plain, "forward_heads") else ()
    augmented = hflip or translate > 0
    extra = [f"top1_{head}" for head in heads] + (["top1_single_view"] if augmented else [])
    totals = torch.zeros(4 + len(extra), dtype=torch.float64, device=device)  # loss, top-1, top-5, count, extra
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, precision):
            single = _predict(model, images, heads)
            by_head = _view(model, images, heads, hflip=hflip, plain=single)
            if translate:
                up_left, down_right = (_view(model, x, heads, hflip=hflip) for x in _translated(images, translate))
                by_head = {key: logits / 2 + (up_left[key] + down_right[key]) / 4 for key, logits in by_head.items()}
            if augmented:
                by_head["top1_single_view"] = single["top1"]
        logits = by_head["top1"]
        k = min(5, logits.shape[1])
        hits = _topk_hits(logits, targets, k)  # (B, k)
        # The same topk as top-1's: bf16 logits tie often, and other ways to rank break ties differently.
        extra_hits = [_topk_hits(by_head[key], targets, k)[:, 0].sum().double() for key in extra]
        totals += torch.stack(
            [
                F.cross_entropy(logits, targets, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
                torch.tensor(len(targets), dtype=torch.float64, device=device),
                *extra_hits,
            ]
        )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    model.train(was_training)
    loss, top1, top5, count, *extra_totals = totals.tolist()
    count = max(count, 1.0)
    metrics = {"loss": loss / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count}
    metrics.update({key: 100.0 * hits / count for key, hits in zip(extra, extra_totals)})
    return metrics


def _predict(model: nn.Module, images: Tensor, heads: tuple[str, ...]) -> dict[str, Tensor]:
    """fp32 logits by metric name: ``top1`` (the model's prediction) and ``top1_<head>`` per head."""
    if not heads:
        return {"top1": model(images).float()}
    plain = unwrap(model)
    by_head = {head: logits.float() for head, logits in plain.forward_heads(images).items()}
    return {"top1": by_head[plain.eval_head], **{f"top1_{head}": by_head[head] for head in heads}}


def _view(
    model: nn.Module, images: Tensor, heads: tuple[str, ...], *, hflip: bool, plain: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """The logits of ``images`` (``plain`` when already computed), averaged with their mirror's under ``hflip``."""
    plain = _predict(model, images, heads) if plain is None else plain
    if not hflip:
        return plain
    mirrored = _predict(model, images.flip(-1), heads)
    return {key: (logits + mirrored[key]) / 2 for key, logits in plain.items()}


def _translated(images: Tensor, pixels: int) -> tuple[Tensor, Tensor]:
    """``images`` (B, C, H, W) shifted by (+pixels, +pixels) and (-pixels, -pixels), borders reflected."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (pixels,) * 4, mode="reflect")  # (B, C, H + 2p, W + 2p)
    far = 2 * pixels
    return padded[..., :height, :width], padded[..., far : far + height, far : far + width]


def _topk_hits(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    """(B, k) booleans: whether the i-th ranked class of each image is its target."""
    return logits.topk(k, dim=1).indices.eq(targets[:, None])
