"""The FLOP counter (research/models/flops.py): what the benchmark's MFU and the cost estimate's scaling divide by."""

from __future__ import annotations

import pytest
import torch

from research.models.flops import forward_flops, registered_flops
from research.registry import MODELS


def test_flops_count_attention() -> None:
    """The CPU attention kernel is counted: a nano DeiT's forward is more than its linear layers."""
    model = MODELS.build("deit_nano_patch4_32", num_classes=10).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens, width, depth = 65, 64, 2  # 64 patches + class token; nano: width 64, depth 2
    linear = depth * tokens * 2 * (12 * width * width)  # qkv 3, proj 1, MLP 8 (x D^2), 2 FLOPs per MAC
    attention = depth * 4 * tokens * tokens * width  # QK^T and AV
    assert forward_flops(model, images) == pytest.approx(linear + attention, rel=0.05)


def _vit_forward_gflops(width: int, depth: int, tokens: int, patches: int, patch: int, classes: int) -> float:
    """A ViT's forward FLOPs per image from its shapes: blocks (24 N D^2 + 4 N^2 D), patch embedding, head."""
    blocks = depth * (24 * tokens * width**2 + 4 * tokens**2 * width)
    return (blocks + patches * 2 * 3 * patch**2 * width + 2 * width * classes) / 1e9


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, width, expected",
    [("deit_tiny_patch16_224", 192, 2.51), ("deit_small_patch16_224", 384, 9.20)],
)
def test_flops_of_deit_at_224_match_their_shapes(name: str, width: int, expected: float) -> None:
    """The counts that MFU and the cost estimate divide by: the paper's DeiT-Ti / DeiT-S at 224 (1000
    classes), the same in eval and training mode and at any batch, and equal to the shapes' arithmetic."""
    model = MODELS.build(name, num_classes=1000)
    counted = registered_flops(name, 224) / 1e9  # on the meta device
    assert counted == pytest.approx(_vit_forward_gflops(width, 12, 197, 196, 16, 1000), rel=0.005)
    assert counted == pytest.approx(expected, abs=0.01)
    at_batch_8_training = forward_flops(model.train(), torch.randn(8, 3, 224, 224)) / 1e9
    assert at_batch_8_training == pytest.approx(counted, rel=1e-6)


@pytest.mark.parametrize(("name", "img_size"), [("deit_nano_patch4_32", 32), ("airbench_cifar", 32), ("deit_tiny_patch16_224", 64)])
def test_a_registered_model_is_counted_on_the_meta_device_as_on_the_cpu(name: str, img_size: int) -> None:
    built = MODELS.build(name, num_classes=1000, img_size=img_size).eval()
    assert registered_flops(name, img_size) == pytest.approx(forward_flops(built, torch.randn(2, 3, img_size, img_size)), rel=1e-9)
    assert registered_flops(name, img_size) > 0
