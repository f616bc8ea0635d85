"""The lr schedules built from ``sched:``: airbench's triangle (poly at power 1 after a prefixed warm-up)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from research.config.schema import ExperimentCfg, SchedCfg, TrainCfg
from research.launch.dist import DistEnv
from research.launch.train import build_state


def lrs(sched: SchedCfg, *, epochs: int = 10, steps_per_epoch: int = 10) -> list[float]:
    cfg = ExperimentCfg(train=TrainCfg(epochs=epochs), sched=sched)
    cfg.optim.name, cfg.optim.lr, cfg.optim.scale_lr = "sgd", 1.0, False
    data = SimpleNamespace(loop_data=SimpleNamespace(steps_per_epoch=steps_per_epoch))
    state = build_state(cfg, nn.Linear(2, 2), data, DistEnv(device=torch.device("cpu")))  # type: ignore[arg-type]
    out = []
    for step in range(epochs * steps_per_epoch + 1):
        state.scheduler.step_update(num_updates=step)
        out.append(state.optimizer.param_groups[0]["lr"])
    return out


def test_poly_at_power_one_with_a_prefixed_warmup_is_airbenchs_triangle() -> None:
    # airbench94: np.interp(step, [0, 0.23 T, T], [0.2, 1, 0.07]) x lr; here T = 100 steps, warm-up 2.3 epochs
    got = lrs(SchedCfg(name="poly", warmup_epochs=2.3, warmup_lr=0.2, min_lr=0.07, decay_rate=1.0, warmup_prefix=True, step_on="step"))
    expected = [0.2 + 0.8 * t / 23 if t < 23 else 1.0 - 0.93 * (t - 23) / 77 for t in range(101)]
    assert got == pytest.approx(expected, abs=1e-9)
    assert max(got) == pytest.approx(1.0) and got[-1] == pytest.approx(0.07)


def test_without_the_prefix_the_cosine_schedule_is_unchanged() -> None:
    got = lrs(SchedCfg(name="cosine", warmup_epochs=1.0, warmup_lr=0.0, min_lr=0.0, step_on="step"))
    assert got[0] == 0.0 and got[5] == pytest.approx(0.5)
    assert got[10] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 10 / 100)).item()))
