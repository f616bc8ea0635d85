"""CIFAR CNNs: timm ResNets with a 3x3 stride-1 stem, registered as plain (non-distilled) models."""

from __future__ import annotations

import inspect

import pytest
import timm
import torch
from torch import nn

from research.registry import MODELS, ModelInfo

CIFAR_CNNS = ["resnet10_cifar", "resnet18_cifar"]


@pytest.mark.parametrize("name", CIFAR_CNNS)
def test_registered_as_plain_cnn(name: str) -> None:
    assert MODELS.info(name).distilled is False
    assert MODELS.info(name).family == "cnn"
    params = MODELS.signature(name).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert {k: p.default for k, p in params.items()} == {"num_classes": 1000, "img_size": 32, "drop_path_rate": 0.0}


@pytest.mark.parametrize("name", CIFAR_CNNS)
def test_cifar_stem_keeps_full_resolution(name: str) -> None:
    net = MODELS.build(name, num_classes=10)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)
    features = net.forward_features(torch.randn(2, 3, 32, 32))
    assert features.shape[-2:] == (4, 4)  # 32 / 2**3: only the three stride-2 stages downsample


@pytest.mark.parametrize("name", CIFAR_CNNS)
def test_forward_backward(name: str) -> None:
    net = MODELS.build(name, num_classes=10)
    logits = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    logits.logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_resnet18_cifar_is_timm_resnet18_with_another_stem() -> None:
    ours = MODELS.build("resnet18_cifar", num_classes=10).state_dict()
    theirs = timm.create_model("resnet18", pretrained=False, num_classes=10).state_dict()
    assert ours.keys() == theirs.keys()
    differing = [k for k in ours if ours[k].shape != theirs[k].shape]
    assert differing == ["conv1.weight"]
    assert ours["conv1.weight"].shape == (64, 3, 3, 3)


def test_drop_path_rate_reaches_the_blocks() -> None:
    net = MODELS.build("resnet10_cifar", num_classes=10, drop_path_rate=0.3)
    rates = [m.drop_prob for m in net.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.3)


def test_resnet10_cifar_is_small_and_fits_a_batch() -> None:
    """The fast teacher for tests: well under 1M parameters and able to memorise a small batch."""
    torch.manual_seed(0)
    net = MODELS.build("resnet10_cifar", num_classes=10)
    assert sum(p.numel() for p in net.parameters()) < 400_000
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(("name", "width"), [("resnet9_cifar", 64), ("resnet9_slim_cifar", 32)])
def test_resnet9_shapes_and_registration(name: str, width: int) -> None:
    assert MODELS.info(name) == ModelInfo(distilled=False, family="cnn", default_img_size=32)
    net = MODELS.build(name, num_classes=10)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8 and [c.out_channels for c in convs] == [width, 2 * width, 2 * width, 2 * width, 4 * width, 8 * width, 8 * width, 8 * width]
    logits = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    logits.logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_resnet9_scales_its_logits() -> None:
    net = MODELS.build("resnet9_slim_cifar", num_classes=10).eval()
    features = nn.Sequential(*list(net)[:-2])(torch.randn(2, 3, 32, 32))  # up to the head and the scale
    assert torch.allclose(net[-1](net[-2](features)), 0.125 * net[-2](features))


def test_resnet9_normalises_after_pooling() -> None:
    """Page's final layout: each downsampling layer pools right after its conv, so its BatchNorm and
    ReLU run on the pooled map (a quarter of the pixels)."""
    net = MODELS.build("resnet9_slim_cifar", num_classes=10)
    sizes: list[int] = []
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(lambda _m, inputs, _out: sizes.append(inputs[0].shape[-1]))
    net(torch.randn(2, 3, 32, 32))
    # prep, layer1 conv (pooled), its residual pair, layer2 (pooled), layer3 (pooled), its residual pair
    assert sizes == [32, 16, 16, 16, 8, 4, 4, 4]
