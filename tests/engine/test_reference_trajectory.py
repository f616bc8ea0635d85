"""With every switch of docs/EXPERIMENTS.md's divergence table at the reference's value, a short run
follows the reference code's learning-rate, sampler and EMA trajectories (facebookresearch/deit)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEma

from research.config import load_run
from research.launch.data import build_data
from research.launch.dist import DistEnv
from research.launch.train import train

EPOCHS, STEPS, BATCH, LR = 4, 6, 8, 2e-3 * 8 / 512  # 48 images; the lr scaled by batch / 512
REFERENCE = {
    "sched": {"step_on": "epoch", "warmup_epochs": 2, "warmup_lr": 1e-6, "min_lr": 1e-5},
    "loader": {"batch_size": BATCH, "workers": 0, "repeated_aug_single_process": False},
    "optim": {"lr": 2e-3, "decay_dist_token": True},
    "train": {"epochs": EPOCHS, "log_every_steps": 1, "progress": False, "ema": True, "ema_decay": 0.9, "ema_copy_first": False},
}
OURS = {
    "sched": {"step_on": "step", "warmup_epochs": 2, "warmup_lr": 1e-6, "min_lr": 1e-5},
    "loader": {"batch_size": BATCH, "workers": 0, "repeated_aug_single_process": True},
    "optim": {"lr": 2e-3, "decay_dist_token": False},
    "train": {"epochs": EPOCHS, "log_every_steps": 1, "progress": False, "ema": True, "ema_decay": 0.9, "ema_copy_first": True},
}
COMMON = {
    "model": {"name": "deit_nano_distilled_patch4_32", "img_size": 32},
    "aug": {"name": "none", "simple_crop": True, "repeated_aug": 3},
    "logger": {"name": "jsonl"},
}


def reference_lrs() -> list[float]:
    """The lr of each epoch as the reference drives timm's scheduler: built per epoch (its
    ``create_scheduler``), read during the epoch, then ``lr_scheduler.step(epoch)`` after it."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    scheduler = CosineLRScheduler(optimizer, t_initial=EPOCHS, lr_min=1e-5, warmup_lr_init=1e-6, warmup_t=2, t_in_epochs=True)
    lrs = []
    for epoch in range(EPOCHS):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(epoch)
    return lrs


def recorder(log: dict[str, Any]) -> Callable[[Any], None]:
    """An ``on_loop`` hook keeping the weights the EMA sees at each update, and the param groups."""

    def hook(loop: Any) -> None:
        log["ema_start"] = copy.deepcopy(loop.state.ema.module)
        log["seen"] = []
        log["groups"] = loop.state.optimizer.param_groups
        log["dist_token"] = loop.state.model.dist_token
        update = loop.state.ema.update

        def recording_update(model: torch.nn.Module, step: int | None = None) -> None:
            log["seen"].append(copy.deepcopy(model.state_dict()))
            update(model, step=step)

        loop.state.ema.update = recording_update
        log["loop"] = loop

    return hook


def run(experiment: Callable[..., Path], name: str, keys: dict) -> tuple[Any, dict[str, Any]]:
    log: dict[str, Any] = {}
    loaded = load_run(experiment(name, **COMMON, **keys))
    train(loaded, on_loop=recorder(log))
    return loaded, log


def logged_lrs(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [line["train/lr"] for line in lines if "train/loss" in line]


def model_ema_of(log: dict[str, Any], decay: float) -> dict[str, torch.Tensor]:
    """What timm's ModelEma (the reference's) holds after the same updates."""
    reference = ModelEma(log["ema_start"], decay=decay)
    scratch = copy.deepcopy(log["ema_start"])
    for weights in log["seen"]:
        scratch.load_state_dict(weights)
        reference.update(scratch)
    return reference.ema.state_dict()


def epoch_indices(loaded: Any, epoch: int) -> list[int]:
    data = build_data(loaded.cfg, DistEnv())
    return [index for index, _seed in data.loop_data.train_batches(epoch, 0).sampler]  # (index, its draws' seed)


@pytest.mark.slow
def test_reference_keys_follow_the_reference_trajectories(experiment) -> None:
    loaded, log = run(experiment, "reference", REFERENCE)

    # lr: one value per epoch, the reference's, each held for the whole epoch (epochs 0 and 1 at warmup_lr)
    lrs = logged_lrs(loaded.run_dir)
    assert lrs == [lr for lr in reference_lrs() for _ in range(STEPS)]
    assert lrs[0] == lrs[STEPS] == 1e-6

    # sampler: on one process, every image once per epoch (the reference's RandomSampler), a new order each epoch
    first, second = epoch_indices(loaded, 0), epoch_indices(loaded, 1)
    assert sorted(first) == sorted(second) == list(range(48)) and first != second

    # EMA: timm's ModelEma, decaying from the first update
    ema = log["loop"].state.ema.module.state_dict()
    expected = model_ema_of(log, decay=0.9)
    assert len(log["seen"]) == EPOCHS * STEPS
    for key, value in expected.items():
        torch.testing.assert_close(ema[key], value, rtol=1e-6, atol=1e-7, msg=key)

    # the distillation token is weight-decayed, as under the reference's timm 0.3.2
    (group,) = [g for g in log["groups"] if any(p is log["dist_token"] for p in g["params"])]
    assert group["weight_decay"] == 0.05


@pytest.mark.slow
def test_our_defaults_differ_from_the_reference_where_the_table_says(experiment) -> None:
    loaded, log = run(experiment, "ours", OURS)

    lrs = logged_lrs(loaded.run_dir)
    assert lrs[1] > lrs[0] and len(set(lrs[:STEPS])) == STEPS  # per update: rises within the first epoch
    indices = epoch_indices(loaded, 0)
    assert len(set(indices)) == 48 // 3 and all(indices.count(i) == 3 for i in set(indices))  # 3 copies each

    # ModelEmaV3.update(step) copies the weights at steps 0 and 1, so it is not ModelEma's average
    ema = log["loop"].state.ema.module.state_dict()
    expected = model_ema_of(log, decay=0.9)
    assert not torch.allclose(ema["dist_token"], expected["dist_token"], rtol=1e-6, atol=1e-7)

    (group,) = [g for g in log["groups"] if any(p is log["dist_token"] for p in g["params"])]
    assert group["weight_decay"] == 0.0
