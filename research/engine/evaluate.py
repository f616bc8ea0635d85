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
    model: nn.Module, loader: Iterable, device: torch.device, precision: str = "fp32"
) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 accuracy (in %) of ``model`` over ``loader``.

    For a model with a distillation token (one that has ``forward_heads``), the top-1 of each way to
    predict is added from the same forward pass: ``top1_class``, ``top1_distillation`` and
    ``top1_both`` (the paper's Table 3 columns); ``top1`` is that of the model's ``eval_head``.
    Each rank evaluates its own shard; sums are all-reduced, so every rank returns the totals.
    """
    was_training = model.training
    model.eval()
    plain = unwrap(model)
    heads = HEADS if hasattr(plain, "forward_heads") else ()
    totals = torch.zeros(4 + len(heads), dtype=torch.float64, device=device)  # loss, top-1, top-5, count, heads
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, precision):
            if heads:
                from_class, from_distillation = (t.float() for t in plain.forward_heads(images))
                by_head = {"class": from_class, "distillation": from_distillation}
                by_head["both"] = (from_class + from_distillation) / 2
                logits = by_head[plain.eval_head]
            else:
                logits = model(images).float()
        k = min(5, logits.shape[1])
        hits = _topk_hits(logits, targets, k)  # (B, k)
        # The same topk as top-1's: bf16 logits tie often, and other ways to rank break ties differently.
        head_hits = [_topk_hits(by_head[head], targets, k)[:, 0].sum().double() for head in heads]
        totals += torch.stack(
            [
                F.cross_entropy(logits, targets, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
                torch.tensor(len(targets), dtype=torch.float64, device=device),
                *head_hits,
            ]
        )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    model.train(was_training)
    loss, top1, top5, count, *per_head = totals.tolist()
    count = max(count, 1.0)
    metrics = {"loss": loss / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count}
    metrics.update({f"top1_{head}": 100.0 * hits / count for head, hits in zip(heads, per_head)})
    return metrics


#: The predictions of a distilled model that evaluation reports: ``DistilledDeiT.eval_head`` values.
HEADS = ("class", "distillation", "both")


def _topk_hits(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    """(B, k) booleans: whether the i-th ranked class of each image is its target."""
    return logits.topk(k, dim=1).indices.eq(targets[:, None])
