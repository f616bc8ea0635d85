"""FLOPs per image of a model, counted by ``torch.utils.flop_counter`` from its forward pass.

A count is a property of the shapes, not of the device: :func:`registered_flops` builds a registered
model on the meta device (no memory, no data), which is how the cost estimate scales a measured rate
to a model it has no row for; the benchmark counts built models with :func:`forward_flops` for its MFU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from research.registry import MODELS

__all__ = ["forward_flops", "registered_flops"]


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def forward_flops(model: nn.Module, images: torch.Tensor) -> float:
    """FLOPs of one forward pass per image (matmuls, convolutions, attention), in the model's current
    mode, on the device ``images`` are on.

    torch's counter knows the GPU attention kernels but not the CPU one timm's ViT reaches through
    ``F.scaled_dot_product_attention``; it is mapped to the same formula, else attention (5-14% of a
    DeiT's FLOPs) would be missing.
    """
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(images)
    return counter.get_total_flops() / images.shape[0]


def registered_flops(name: str, img_size: int, num_classes: int = 1000) -> float:
    """Forward FLOPs per image of the ``MODELS`` entry ``name`` at ``img_size``, in eval mode, counted
    on the meta device (the count of the built model, in a fraction of a second even for DeiT-B)."""
    with torch.device("meta"):
        model = MODELS.build(name, num_classes=num_classes, img_size=img_size).eval()
        return forward_flops(model, torch.empty(2, 3, img_size, img_size))
