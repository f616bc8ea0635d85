"""The training loop. It knows no model, loss or recipe by name: it drives an objective that returns a
:class:`LossOutput`-like result, over loaders it is handed, and reports to a tracker."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from research.config.schema import TrainCfg
from research.engine.evaluate import autocast, evaluate
from research.engine.run_dir import RunDir
from research.engine.state import TrainState, unwrap

log = logging.getLogger(__name__)


class Objective(Protocol):
    def __call__(self, images: torch.Tensor, outputs: Any, targets: torch.Tensor) -> Any: ...


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], *, step: int) -> None: ...


@dataclass
class TrainData:
    """What the loop needs from the data side.

    ``train_batches(epoch, skip)`` returns the epoch's batches, ``skip`` already-done steps left out
    (a mid-epoch resume); ``mix`` is the batch-level mixup/cutmix, or None.
    """

    train_batches: Callable[[int, int], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    steps_per_epoch: int
    val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None
    batch_size: int
    world_size: int = 1


@dataclass
class Loop:
    """Everything ``fit`` drives, built by :mod:`research.launch.train`."""

    state: TrainState
    data: TrainData
    objective: Objective
    tracker: Tracker
    run_dir: RunDir
    options: TrainCfg
    device: torch.device
    clip_grad: float | None = None
    is_main: bool = True


def fit(loop: Loop) -> dict[str, Any]:
    """Train from ``loop.state.epoch`` to ``options.epochs``; returns the last epoch's metrics."""
    state, options = loop.state, loop.options
    record: dict[str, Any] = {}
    while state.epoch < options.epochs:
        started = time.perf_counter()
        train_metrics = train_one_epoch(loop)
        record = {"epoch": state.epoch, **train_metrics, "epoch_time_s": time.perf_counter() - started}
        if state.epoch % options.eval_every_epochs == 0 or state.epoch == options.epochs:
            record.update(evaluate_all(loop))
        state.wall_time_s += time.perf_counter() - started
        improved = record.get("val/top1", -math.inf) > state.best_top1
        if improved:
            state.best_top1 = record["val/top1"]
        if state.best_top1 > -math.inf:  # nothing before the first evaluation: -inf is not JSON
            record["val/best_top1"] = state.best_top1
        # The line first: a kill between the two leaves an older checkpoint, and the resume drops
        # the lines past it; the other order would lose this epoch's line for good.
        loop.run_dir.append_metrics(record)
        loop.run_dir.save(state, best=improved)
        loop.tracker.log(record, step=state.step)
        if loop.is_main:
            log.info("epoch %d/%d: %s", state.epoch, options.epochs, _brief(record))
    return record


def _brief(record: dict[str, Any]) -> str:
    keys = ("train/epoch_loss", "val/top1", "val/top5", "val_ema/top1", "train/epoch_images_per_s", "epoch_time_s")
    return ", ".join(f"{key} {record[key]:.4g}" for key in keys if key in record)


def evaluate_all(loop: Loop) -> dict[str, float]:
    """Validation metrics of the raw weights and, when kept, of the EMA weights."""
    precision, views = loop.options.precision, {"hflip": loop.options.eval_hflip, "translate": loop.options.eval_translate}
    raw = evaluate(loop.state.model, loop.data.val_loader, loop.device, precision, **views)
    metrics = {f"val/{k}": v for k, v in raw.items()}
    if loop.state.ema is not None:
        ema_model = getattr(loop.state.ema, "module", loop.state.ema)
        ema = evaluate(ema_model, loop.data.val_loader, loop.device, precision, **views)
        metrics.update({f"val_ema/{k}": v for k, v in ema.items()})
    return metrics


def train_one_epoch(loop: Loop) -> dict[str, float]:
    state, data, options = loop.state, loop.data, loop.options
    state.model.train()
    batches = data.train_batches(state.epoch, state.epoch_step)
    progress = tqdm(
        batches,
        total=data.steps_per_epoch - state.epoch_step,
        desc=f"epoch {state.epoch + 1}/{options.epochs}",
        disable=not (loop.is_main and options.progress and sys.stderr.isatty()),
        dynamic_ncols=True,
        leave=False,
    )
    window = _Window(data.batch_size * data.world_size)
    epoch_loss, epoch_steps = torch.zeros((), device=loop.device), 0
    for images, targets in progress:
        loss = train_step(loop, images, targets)
        epoch_loss += loss
        epoch_steps += 1
        window.add(loss)
        if state.step % options.log_every_steps == 0:
            logs = window.flush(_lr(state.optimizer))
            if not math.isfinite(logs["train/loss"]):  # checked here, not every step: .item() syncs a GPU
                raise FloatingPointError(
                    f"train loss is {logs['train/loss']} at step {state.step}; lower optim.lr or set optim.clip_grad"
                )
            loop.tracker.log({**logs, "epoch": state.epoch}, step=state.step)
            progress.set_postfix(loss=f"{logs['train/loss']:.3f}", lr=f"{logs['train/lr']:.2e}", img_s=f"{logs['train/images_per_s']:.0f}")
        if options.checkpoint_every_steps and state.step % options.checkpoint_every_steps == 0:
            loop.run_dir.save(state)
    state.epoch += 1
    state.epoch_step = 0
    totals = torch.stack([epoch_loss, torch.tensor(float(epoch_steps), device=loop.device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)  # the epoch's loss over every rank, not rank 0's share
    mean_loss = (totals[0] / totals[1].clamp(min=1)).item()
    return {"train/epoch_loss": mean_loss, "train/lr": _lr(state.optimizer), **window.epoch_rate()}


def train_step(loop: Loop, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One optimisation step; returns the detached loss."""
    state, device = loop.state, loop.device
    images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
    if loop.options.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if loop.data.mix is not None:
        images, targets = loop.data.mix(images, targets)
    with autocast(device, loop.options.precision):
        outputs = state.model(images)
        result = loop.objective(images, outputs, targets)
    loss = result.loss
    state.optimizer.zero_grad(set_to_none=True)
    _backward_and_step(state, loss, loop.clip_grad)
    state.scheduler.step_update(num_updates=state.step)
    return loss.detach()


def _backward_and_step(state: TrainState, loss: torch.Tensor, clip_grad: float | None) -> None:
    scaler = state.scaler
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(state.optimizer)
    else:
        loss.backward()
    if clip_grad:
        nn.utils.clip_grad_norm_(state.model.parameters(), clip_grad)
    state.updating = True  # a preemption checkpoint now would save half-updated weights
    if scaler is not None:
        scaler.step(state.optimizer)
        scaler.update()
    else:
        state.optimizer.step()
    if state.ema is not None:
        state.ema.update(unwrap(state.model), step=state.step)
    state.step += 1
    state.epoch_step += 1
    state.updating = False


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


class _Window:
    """Loss and throughput over the steps since the last log line, and over the epoch."""

    def __init__(self, images_per_step: int) -> None:
        self.images_per_step = images_per_step
        self.losses: list[torch.Tensor] = []
        self.started = self.epoch_started = time.perf_counter()
        self.epoch_images = 0

    def add(self, loss: torch.Tensor) -> None:
        self.losses.append(loss)
        self.epoch_images += self.images_per_step

    def flush(self, lr: float) -> dict[str, float]:
        now = time.perf_counter()
        count = len(self.losses)
        loss = torch.stack(self.losses).mean().item() if count else math.nan
        rate = count * self.images_per_step / max(now - self.started, 1e-9)
        self.losses, self.started = [], now
        return {"train/loss": loss, "train/lr": lr, "train/images_per_s": rate}

    def epoch_rate(self) -> dict[str, float]:
        return {"train/epoch_images_per_s": self.epoch_images / max(time.perf_counter() - self.epoch_started, 1e-9)}
