"""With every switch of docs/EXPERIMENTS.md's divergence table at the reference's value, runs follow
the reference code's algorithms (facebookresearch/deit, main.py / samplers.py / engine.py), run here
beside ours: the lr of every epoch of a 300-epoch run against timm's ``create_scheduler`` called with
DeiT's arguments, the repeated-augmentation batches of 8 ranks against DeiT's ``RASampler``, and the
EMA against timm's ``ModelEma`` updated after every step as DeiT's ``train_one_epoch`` does."""

from __future__ import annotations

import argparse
import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from timm.scheduler import CosineLRScheduler, create_scheduler
from timm.utils import ModelEma

from research.config import load_run
from research.data import build_train_sampler
from research.engine.fit import Loop, LoopOptions, fit
from research.launch.dist import DistEnv
from research.launch.run_data import build_data
from research.launch.train import build_model, build_state, train

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


# --- DeiT's algorithms, as facebookresearch/deit has them ----------------------------------------

#: DeiT's main.py scheduler arguments (its argparse defaults: cosine, 300 epochs, 5 warm-up epochs from
#: 1e-6, min lr 1e-5, decay epochs 30 (unused by cosine), cooldown 10, no lr noise, seed 0)
DEIT_ARGS = argparse.Namespace(
    sched="cosine", epochs=300, lr_noise=None, lr_noise_pct=0.67, lr_noise_std=1.0, warmup_lr=1e-6, min_lr=1e-5,
    decay_epochs=30, warmup_epochs=5, cooldown_epochs=10, patience_epochs=10, decay_rate=0.1, seed=0,
)  # fmt: skip


def deit_epoch_lrs(lr: float) -> list[float]:
    """DeiT's main.py: ``lr_scheduler, _ = create_scheduler(args, optimizer)``, then for each epoch
    ``train_one_epoch`` (which trains, and logs, at the optimizer's lr) and ``lr_scheduler.step(epoch)``."""
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=lr)
    lr_scheduler, _ = create_scheduler(DEIT_ARGS, optimizer)
    lrs = []
    for epoch in range(DEIT_ARGS.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        lr_scheduler.step(epoch)
    return lrs


class DeitRASampler:
    """DeiT's samplers.py ``RASampler``: the epoch's permutation from ``manual_seed(epoch)``, each index
    repeated ``num_repeats`` times, padded, rank r taking every R-th from r, cut to
    floor(n // 256 * 256 / R) per rank."""

    def __init__(self, n: int, num_replicas: int, rank: int, num_repeats: int = 3) -> None:
        self.n, self.num_replicas, self.rank, self.num_repeats, self.epoch = n, num_replicas, rank, num_repeats, 0
        self.num_samples = int(math.ceil(n * num_repeats / num_replicas))
        self.total_size = self.num_samples * num_replicas
        self.num_selected_samples = int(math.floor(n // 256 * 256 / num_replicas))

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.epoch)
        indices = torch.randperm(self.n, generator=g)
        indices = torch.repeat_interleave(indices, repeats=self.num_repeats, dim=0).tolist()
        padding_size = self.total_size - len(indices)
        if padding_size > 0:
            indices += indices[:padding_size]
        indices = indices[self.rank : self.total_size : self.num_replicas]
        return iter(indices[: self.num_selected_samples])


class _Records:
    """The run dir's records, kept in memory: 300 checkpoints on disk would cost minutes, not lrs."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.last = "memory"

    def append_metrics(self, record: dict[str, Any]) -> None:
        self.metrics.append(dict(record))

    def save(self, state: Any, *, best: bool = False) -> None:
        pass


class _NoTracker:
    def log(self, metrics: Any, *, step: int) -> None:
        pass


@pytest.mark.slow
def test_every_epoch_of_a_300_epoch_run_trains_at_deits_lr(experiment) -> None:
    """The engine's fit (its scheduler built by build_state, stepped by the loop; one step per epoch), its
    lr read from each epoch's record, against DeiT's main.py loop."""
    keys = {
        "sched": {"name": "cosine", "step_on": "epoch", "warmup_epochs": 5, "warmup_lr": 1e-6, "min_lr": 1e-5},
        "data": {"name": "synthetic", "size": 2, "num_classes": 2},
        "loader": {"batch_size": 2, "workers": 0},
        "optim": {"lr": 5e-4, "scale_lr": False},  # DeiT's 5e-4 per 512 images at a global batch of 512
        "train": {"epochs": 300, "eval_every_epochs": 300, "log_every_steps": 1000, "progress": False},
    }
    cfg = load_run(experiment("deit_300", model={"name": "deit_nano_patch4_32", "img_size": 32}, **keys)).cfg
    data = build_data(cfg, DistEnv())
    model = build_model(cfg, data.num_classes, DistEnv())
    state = build_state(cfg, model, data, DistEnv())
    records = _Records()

    def objective(images: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> Any:
        return SimpleNamespace(loss=outputs.float().logsumexp(1).mean() * 0, logs={})  # no update: only the lr matters

    fit(Loop(state, data.loop_data, objective, _NoTracker(), records, LoopOptions.of(cfg.train), torch.device("cpu")))
    ours = [m["train/lr"] for m in records.metrics]
    reference = deit_epoch_lrs(lr=5e-4 * 512 / 512)  # DeiT's linear scaling (lr x batch x world / 512) at 512
    assert len(ours) == 300
    assert ours == pytest.approx(reference, rel=1e-12, abs=0)
    assert ours[0] == ours[1] == 1e-6 and max(ours) == ours[6]  # warm-up held per epoch; the peak at epoch 6
    assert 1e-5 < ours[-1] < 1.01e-5  # near cosine's floor, min_lr, at the last epoch (lr(298) of 300)


@pytest.mark.parametrize("n", [2048, 1000])
def test_repeated_augmentation_on_8_ranks_is_deits_rasampler(n: int) -> None:
    """Every rank's indices of each epoch, with the reference's epoch-only seed: identical where DeiT's
    per-rank count (rounded down to 256 / R) is ours, and a prefix of ours where it rounds down."""
    for epoch in range(3):
        for rank in range(8):
            ours = build_train_sampler(range(n), repeats=3, num_replicas=8, rank=rank, seed=123, seed_epoch_only=True)
            theirs = DeitRASampler(n, num_replicas=8, rank=rank)
            ours.set_epoch(epoch)
            theirs.epoch = epoch
            mine, reference = list(ours), list(theirs)
            assert mine[: len(reference)] == reference
            assert len(reference) == (len(mine) if n % 256 == 0 else n // 256 * 256 // 8)
