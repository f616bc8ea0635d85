"""Top-1 / top-5 evaluation, summed over every rank."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

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


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, device: torch.device, precision: str = "fp32", *, hflip: bool = False
) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 accuracy (in %) of ``model`` over ``loader``.

    For a model with a distillation token (one that has ``forward_heads`` and ``eval_heads``), the
    top-1 of each way to predict is added from the same forward pass: ``top1_class``, ``top1_distillation`` and
    ``top1_both`` (the paper's Table 3 columns); ``top1`` is that of the model's ``eval_head``.
    With ``hflip``, every metric is of the logits averaged over each image and its mirror (the
    flip test-time augmentation of fast CIFAR training), and ``top1_single_view`` keeps the top-1
    of the unflipped images alone. Each rank evaluates its own shard; sums are all-reduced, so every
    rank returns the totals.
    """
    was_training = model.training
    model.eval()
    plain = unwrap(model)
    heads = tuple(getattr(plain, "eval_heads", ())) if hasattr(plain, "forward_heads") else ()
    extra = [f"top1_{head}" for head in heads] + (["top1_single_view"] if hflip else [])
    totals = torch.zeros(4 + len(extra), dtype=torch.float64, device=device)  # loss, top-1, top-5, count, extra
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, precision):
            by_head = _predict(model, images, heads)
            if hflip:
                single_view = by_head["top1"]
                mirrored = _predict(model, images.flip(-1), heads)
                by_head = {key: (logits + mirrored[key]) / 2 for key, logits in by_head.items()}
                by_head["top1_single_view"] = single_view
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


def _topk_hits(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    """(B, k) booleans: whether the i-th ranked class of each image is its target."""
    return logits.topk(k, dim=1).indices.eq(targets[:, None])
