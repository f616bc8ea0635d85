"""airbench's Lookahead: a slow copy whose decay rises with progress, synced every k steps and at the end."""

from __future__ import annotations

import pytest
import torch

from research.config import load_run
from research.engine import checkpoint
from research.engine.lookahead import AIRBENCH_MAX_DECAY, ScheduledLookahead
from research.engine.run_dir import read_metrics
from research.launch.train import train

from .conftest import Interrupt, interrupt_at


def _model(seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 3)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    inputs = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
    optimizer.zero_grad()
    model(inputs).pow(2).mean().backward()
    optimizer.step()


def _airbench_by_hand(total: int, k: int, max_decay: float) -> list[torch.Tensor]:
    """airbench94's loop written out: an EMA of the weights every k steps, the weights reset to it."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.85, nesterov=True)
    slow = [p.detach().clone() for p in model.parameters()]
    for step in range(1, total + 1):
        _step(model, optimizer, step)
        if step % k == 0 or step == total:
            decay = max_decay * (step / total) ** 3
            with torch.no_grad():
                for s, p in zip(slow, model.parameters()):
                    s.lerp_(p, 1 - decay)
                    p.copy_(s)
    return [p.detach() for p in model.parameters()]


def test_decay_rises_with_the_cube_of_progress() -> None:
    optimizer = ScheduledLookahead(torch.optim.SGD(_model().parameters(), lr=0.1), total_steps=100)
    assert optimizer.decay(0) == 0.0
    assert optimizer.decay(50) == pytest.approx(AIRBENCH_MAX_DECAY / 8)
    assert optimizer.decay(100) == optimizer.decay(150) == pytest.approx(0.95**5)


def test_weights_follow_airbench_including_the_sync_at_the_last_step() -> None:
    total, k = 23, 5  # 23 is not a multiple of 5: the last step syncs on its own
    model = _model()
    optimizer = ScheduledLookahead(
        torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.85, nesterov=True), total_steps=total, k=k
    )
    for step in range(1, total + 1):
        _step(model, optimizer, step)

    for got, expected in zip(model.parameters(), _airbench_by_hand(total, k, AIRBENCH_MAX_DECAY)):
        torch.testing.assert_close(got.detach(), expected)
    plain = _model()
    sgd = torch.optim.SGD(plain.parameters(), lr=0.5, momentum=0.85, nesterov=True)
    for step in range(1, total + 1):
        _step(plain, sgd, step)
    assert not torch.allclose(plain.weight, model.weight)  # the averaging changed the trajectory


def test_zero_max_decay_is_the_plain_optimizer() -> None:
    model, plain = _model(), _model()
    wrapped = ScheduledLookahead(torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), total_steps=12, k=3, max_decay=0.0)
    sgd = torch.optim.SGD(plain.parameters(), lr=0.5, momentum=0.9)
    for step in range(1, 13):
        _step(model, wrapped, step)
        _step(plain, sgd, step)
    torch.testing.assert_close(model.weight, plain.weight)


def test_resuming_from_a_state_dict_keeps_the_slow_weights() -> None:
    total, k = 20, 5
    straight = _model()
    optimizer = ScheduledLookahead(torch.optim.SGD(straight.parameters(), lr=0.5, momentum=0.85), total_steps=total, k=k)
    for step in range(1, total + 1):
        _step(straight, optimizer, step)

    first = _model()
    optimizer = ScheduledLookahead(torch.optim.SGD(first.parameters(), lr=0.5, momentum=0.85), total_steps=total, k=k)
    for step in range(1, 8):  # stop between two syncs: the fast weights have moved off the slow copy
        _step(first, optimizer, step)
    saved_model, saved_optimizer = first.state_dict(), optimizer.state_dict()
    assert any("lookahead_slow_buff" in state for state in saved_optimizer["state"].values())

    resumed = _model(seed=1)  # other weights: everything must come from the checkpoint
    resumed.load_state_dict(saved_model)
    optimizer = ScheduledLookahead(torch.optim.SGD(resumed.parameters(), lr=0.5, momentum=0.85), total_steps=total, k=k)
    optimizer.load_state_dict(saved_optimizer)
    for step in range(8, total + 1):
        _step(resumed, optimizer, step)
    torch.testing.assert_close(resumed.weight, straight.weight)
    torch.testing.assert_close(resumed.bias, straight.bias)


def test_bad_arguments_are_refused() -> None:
    sgd = torch.optim.SGD(_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        ScheduledLookahead(sgd, total_steps=0)
    with pytest.raises(ValueError, match="max_decay"):
        ScheduledLookahead(sgd, total_steps=10, max_decay=1.0)


def test_a_run_with_lookahead_resumes_mid_epoch_to_the_same_weights(experiment) -> None:
    options = {"epochs": 2, "checkpoint_every_steps": 3, "log_every_steps": 2, "progress": False}
    optim = {"name": "sgd", "lr": 0.1, "momentum": 0.85, "lookahead_every": 2}
    straight = load_run(experiment("straight", optim=optim, train=options))
    seen = {}

    def record(loop) -> None:
        seen["optimizer"] = loop.state.optimizer
        seen["steps_per_epoch"] = loop.data.steps_per_epoch

    assert train(straight, on_loop=record)["status"] == "done"
    assert isinstance(seen["optimizer"], ScheduledLookahead)
    assert seen["optimizer"].total_steps == 2 * seen["steps_per_epoch"]
    assert seen["optimizer"].param_groups[0]["lookahead_step"] == 2 * seen["steps_per_epoch"]

    resumed = load_run(experiment("resumed", optim=optim, train=options))

    with pytest.raises(Interrupt):
        train(resumed, on_loop=interrupt_at(1, 3))
    saved = checkpoint.load(resumed.run_dir / "last.pt")
    assert any("lookahead_slow_buff" in state for state in saved["optimizer"]["state"].values())
    train(resumed)

    a, b = read_metrics(straight.run_dir)[-1], read_metrics(resumed.run_dir)[-1]
    for key in ("val/loss", "val/top1"):
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6), key
