"""airbench's CIFAR network: patch whitening fitted from data, identity-initialised convs, shift-only norms."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from research.models.airbench import AirbenchNet, PatchWhitening, ShiftOnlyBatchNorm
from research.registry import MODELS, ModelInfo


def _correlated_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Images whose channels and neighbouring pixels are strongly correlated, like natural ones."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 17, 17, generator=g).repeat_interleave(2, -1).repeat_interleave(2, -2)[..., :32, :32]
    return torch.cat([base, 0.8 * base, 0.5 * base], 1) + 0.1 * torch.randn(n, 3, 32, 32, generator=g)


def test_registered_as_plain_cnn_with_the_shared_signature() -> None:
    assert MODELS.info("airbench_cifar") == ModelInfo(distilled=False, family="cnn", default_img_size=32)
    params = MODELS.signature("airbench_cifar").parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert {k: p.default for k, p in params.items()} == {"num_classes": 1000, "img_size": 32, "drop_path_rate": 0.0, "whiten_bias_steps": 0}


def test_shapes_and_gradients() -> None:
    net = MODELS.build("airbench_cifar", num_classes=10)
    sizes: list[tuple[int, ...]] = []
    for module in net.modules():
        if isinstance(module, ShiftOnlyBatchNorm):
            module.register_forward_hook(lambda _m, inputs, _out: sizes.append(tuple(inputs[0].shape[1:])))
    logits = net(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 10)
    # each group normalises its pooled first conv and its second conv at the same resolution
    assert sizes == [(64, 15, 15), (64, 15, 15), (256, 7, 7), (256, 7, 7), (256, 3, 3), (256, 3, 3)]
    logits.logsumexp(dim=1).mean().backward()
    trained = [p for p in net.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    # the only parameters: whitening bias, the norms' shifts, the 3x3 convs and the head
    assert len(trained) == 1 + 6 + 6 + 1


def test_whitening_is_fitted_on_the_first_training_batch_and_whitens_it() -> None:
    layer = PatchWhitening(3, eps=1e-9)
    images = _correlated_images()
    layer.eval()(images)
    assert not layer.fitted and layer.filters.abs().sum() == 0  # evaluation never fits
    layer.train()(images)
    assert layer.fitted
    out = F.conv2d(images, layer.filters[:12])  # the 12 whitened directions, without the bias
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    torch.testing.assert_close(covariance, torch.eye(12), atol=2e-3, rtol=0)
    torch.testing.assert_close(layer.filters[12:], -layer.filters[:12])  # both signs of each direction


def test_whitening_is_not_refitted_after_a_resume() -> None:
    net = MODELS.build("airbench_cifar", num_classes=10).train()
    net(_correlated_images(8, seed=1))
    filters = net[0].filters.clone()
    net(_correlated_images(8, seed=2))  # a later batch leaves the filters alone
    torch.testing.assert_close(net[0].filters, filters, rtol=0, atol=0)
    resumed = MODELS.build("airbench_cifar", num_classes=10)
    resumed.load_state_dict(net.state_dict())  # strict: the filters and the flag are in the state dict
    resumed.train()(_correlated_images(8, seed=3))
    torch.testing.assert_close(resumed[0].filters, filters, rtol=0, atol=0)


def test_whitening_filters_are_not_trained() -> None:
    net = MODELS.build("airbench_cifar", num_classes=10)
    names = {name for name, _ in net.named_parameters()}
    assert "0.bias" in names and "0.filters" not in names
    assert "0.filters" in net.state_dict() and "0.fitted" in net.state_dict()


def test_whitening_bias_freezes_after_its_steps_and_the_count_survives_a_resume() -> None:
    net = MODELS.build("airbench_cifar", num_classes=10, whiten_bias_steps=2).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.1)
    biases = []
    for seed in range(4):
        optimizer.zero_grad()
        net(_correlated_images(8, seed=seed)).logsumexp(dim=1).mean().backward()
        optimizer.step()
        biases.append(net[0].bias.detach().clone())
    assert not torch.equal(biases[0], biases[1])  # the 2nd step still trains it ...
    torch.testing.assert_close(biases[3], biases[1], rtol=0, atol=0)  # ... the 3rd and 4th do not, nor decay it
    assert net[0].bias.grad is None and int(net[0].train_steps) == 4
    resumed = MODELS.build("airbench_cifar", num_classes=10, whiten_bias_steps=2)
    resumed.load_state_dict(net.state_dict())
    resumed.train()(_correlated_images(8, seed=5)).sum().backward()
    assert resumed[0].bias.grad is None


def test_checkpoints_from_before_the_step_counter_still_load() -> None:
    old = MODELS.build("airbench_cifar", num_classes=10).state_dict()
    del old["0.train_steps"]
    MODELS.build("airbench_cifar", num_classes=10).load_state_dict(old)  # strict


def test_convs_start_as_identity_on_their_input_channels() -> None:
    convs = [m for m in MODELS.build("airbench_cifar", num_classes=10).modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(24, 64), (64, 64), (64, 256), (256, 256), (256, 256), (256, 256)]
    x = torch.randn(2, 24, 8, 8)
    torch.testing.assert_close(convs[0](x)[:, :24], x)
    assert convs[0].weight[24:].abs().sum() > 0  # the other filters keep their random init


def test_shift_learns_faster_by_its_gain_under_sgd() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5)
    plain = nn.BatchNorm2d(4)
    ours = ShiftOnlyBatchNorm(4, momentum=0.1, eps=plain.eps, shift_lr_gain=64.0)
    torch.testing.assert_close(ours(x), plain(x))  # scale 1, shift 0: the same function at init
    for norm in (plain, ours):
        params = [norm.bias] if norm is plain else [norm.shift]
        optimizer = torch.optim.SGD(params, lr=0.01)
        (norm(x) * torch.arange(4.0).view(1, 4, 1, 1)).sum().backward()
        optimizer.step()
    torch.testing.assert_close(ours.gain * ours.shift.detach(), 64 * plain.bias.detach())
    assert not any(p is not None and p.requires_grad for p in (ours.weight,))  # no learned scale


def test_logits_are_scaled() -> None:
    net = AirbenchNet(num_classes=10, logit_scale=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(x), 0.5 * nn.Sequential(*net)(x))


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16])
def test_learns_a_small_batch(precision: torch.dtype) -> None:
    torch.manual_seed(0)
    net = MODELS.build("airbench_cifar", num_classes=4)
    images, labels = _correlated_images(16), torch.arange(16) % 4
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.2, momentum=0.9, nesterov=True)
    losses = []
    for _ in range(12):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision is torch.bfloat16):
            loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
