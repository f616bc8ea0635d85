"""The training state: everything a checkpoint saves and a resume restores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from research.engine import checkpoint


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers (its state dict has clean keys)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


@dataclass
class TrainState:
    """Live objects of a run and its progress counters.

    ``epoch`` counts finished epochs; ``epoch_step`` the optimizer steps already done in the
    unfinished one (non-zero only in a mid-epoch checkpoint); ``step`` counts all steps.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    # fp16's loss scaler; disabled (a pass-through) for every other precision
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cuda", enabled=False))
    ema: nn.Module | None = None
    epoch: int = 0
    step: int = 0
    epoch_step: int = 0
    best_top1: float = float("-inf")
    wall_time_s: float = 0.0  # training time over every life of the run
    updating: bool = False  # inside a step's update and its records (fit.train_step): not a state to save
    # The unfinished epoch's loss sums so far ({"keys", "sums", "steps"}, this rank's): a mid-epoch
    # checkpoint keeps them, so the resumed epoch's train/epoch_loss counts every step of the epoch.
    epoch_sums: dict[str, Any] | None = None

    def state_dict(self, config: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() or None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "epoch_step": self.epoch_step,
            "best_top1": self.best_top1,
            "wall_time_s": self.wall_time_s,
            "epoch_sums": self.epoch_sums if self.epoch_step else None,
            "rng": checkpoint.rng_states(),
            "config": config,
        }

    def raise_if_nonfinite_weights(self) -> None:
        """One sync: raise if a weight is NaN or infinite, so that no checkpoint ever holds one.

        The loss check alone misses a step whose loss was finite but whose update overflowed: the
        weights are then infinite, and only the next step's loss would tell. Every rank holds the same
        weights, so every rank raises together.
        """
        tensors = [t for t in unwrap(self.model).state_dict().values() if t.is_floating_point()]
        if tensors and not torch.stack([torch.isfinite(t).all() for t in tensors]).all():
            raise FloatingPointError(
                f"the weights are not finite after step {self.step} (an update overflowed); nothing was "
                "saved; lower optim.lr, set optim.clip_grad or use train.precision=fp32"
            )

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        # The scheduler is not restored: it is a function of the config and the counters, built for
        # this life's train.epochs. A grown run's epochs after the resume so train at the lr a fresh run
        # of the new length has there (README, "train.epochs may grow"), not at the old schedule's min_lr.
        if self.scaler.is_enabled() and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None and saved.get("ema") is not None:
            self.ema.load_state_dict(saved["ema"])
        self.epoch, self.step, self.epoch_step = saved["epoch"], saved["step"], saved["epoch_step"]
        self.best_top1, self.wall_time_s = saved["best_top1"], saved["wall_time_s"]
        self.epoch_sums = saved.get("epoch_sums")  # absent in checkpoints before issue 17
        # timm's scheduler sets the lr of the step (or, stepped per epoch, of the epoch) it is at;
        # each call is a no-op for the other kind of schedule
        self.scheduler.step_update(num_updates=self.step)
        if self.epoch:
            self.scheduler.step(self.epoch - 1)
        checkpoint.restore_rng_states(saved["rng"])
