"""The training loop. It knows no model, loss or recipe by name: it drives an :class:`Objective` over
loaders it is handed, with the :class:`LoopOptions` of its run, and reports to a tracker.

The step never waits on the host: the loss, its parts (``LossOutput.logs``) and a count of
non-finite losses are summed on the device, and read (one sync) only at a log step, before a
checkpoint is written and at the end of an epoch. A non-finite loss stops the run there, so it is
never saved and the run never ends ``done``.

A resume repeats the run it continues bit for bit: each step reseeds the global generators from
(seed, rank, step) (dropout, drop-path and mixup draw from them), so no generator state has to
survive a preemption, on any rank. A stop request (SIGTERM, Ctrl-C: ``Loop.stop``) is read between
steps; the loop then saves the last finished step and raises :class:`RunStopped`.

Under ``train.compile`` the step's device work between the host's draws and the backward (the
batch's mixing, the student's forward, the loss with the teacher's forward: :func:`forward_and_loss`)
is one compiled region; the seeding, the draws, ``zero_grad``, the backward, the scaler and the
optimizer stay outside it (issue 26).
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from research import seeding
from research.engine.evaluate import autocast, eval_views, evaluate
from research.engine.meter import StepMeter
from research.engine.run_dir import RunDir
from research.engine.state import TrainState, unwrap

if TYPE_CHECKING:
    from research.tracking.base import Tracker

log = logging.getLogger(__name__)


class RunStopped(Exception):
    """A stop request ended the run between two steps, after its checkpoint was saved."""

    def __init__(self, message: str, *, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status  # the shell's status for the signal: 128 + its number


class StopSignal(Protocol):
    """A stop request: true once a signal asked the run to stop; ``name`` and ``signum`` say which."""

    @property
    def name(self) -> str: ...

    signum: int | None

    def __call__(self) -> bool: ...


@runtime_checkable
class ObjectiveResult(Protocol):
    """An objective's result (``research.losses.LossOutput``): ``loss`` to backpropagate, and ``logs``, its
    parts as detached scalar tensors keyed ``"loss/<part>"`` (tensors: the step never waits on the device)."""

    @property
    def loss(self) -> torch.Tensor: ...

    @property
    def logs(self) -> Mapping[str, torch.Tensor]: ...


class Objective(Protocol):
    """``objective(images, outputs, targets)``: the (mixed) images the student saw, its output (logits, or
    ``(class_logits, dist_logits)``), the targets (soft under mixup); what ``LOSSES`` entries build."""

    def __call__(self, images: torch.Tensor, outputs: Any, targets: torch.Tensor) -> ObjectiveResult: ...


class BatchMix(Protocol):
    """Mixup/CutMix in two halves: ``draw(shape, device)`` makes the batch's random choices on the host
    (outside a compiled region) for ``(B, 3, H, W)`` images, ``apply(images, targets, drawn)`` is a
    tensor function (inside it)."""

    def draw(self, shape: torch.Size | tuple[int, ...], device: torch.device) -> torch.Tensor | None: ...

    def apply(
        self, images: torch.Tensor, targets: torch.Tensor, drawn: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class LoopOptions:
    """All the loop reads of a run's config: ``train:`` options (``TrainCfg``'s fields of the same names, as
    :meth:`of` copies them), ``optim.clip_grad``, and the ``seed`` each step reseeds from (None: it does not)."""

    epochs: int
    precision: str
    compile: bool
    compile_mode: str
    channels_last: bool
    checkpoint_every_steps: int
    checkpoint_every_s: float
    log_every_steps: int
    eval_every_epochs: int
    eval_hflip: bool
    eval_translate: int
    progress: bool
    ema_copy_first: bool  # ModelEmaV3's first two updates copy the weights
    clip_grad: float | None = None
    seed: int | None = None

    @classmethod
    def of(cls, train: Any, *, clip_grad: float | None = None, seed: int | None = None) -> LoopOptions:
        """The options of a ``train:`` section (:class:`TrainCfg`), with ``optim.clip_grad`` and the seed."""
        names = [f.name for f in fields(cls) if f.name not in ("clip_grad", "seed")]
        return cls(**{name: getattr(train, name) for name in names}, clip_grad=clip_grad, seed=seed)


@dataclass
class TrainData:
    """What the loop needs from the data side.

    ``train_batches(epoch, skip)`` returns the epoch's batches, ``skip`` already-done steps left out
    (a mid-epoch resume): ``(images, targets)``, or with ``augment`` set ``(uint8 pixels, targets,
    draws)`` that the step's compiled region transforms itself; ``mix`` is the batch-level
    mixup/cutmix, or None.
    """

    train_batches: Callable[[int, int], Iterable[tuple[Any, ...]]]
    steps_per_epoch: int
    val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
    mix: BatchMix | None
    batch_size: int
    world_size: int = 1
    # The batch recipe's pure half, run inside the step's compiled region (train.compile with
    # loader.batch_augment): (B, H, W, 3) uint8 pixels and their draws -> (B, 3, S, S) float images,
    # S = augment_size; the draws are made with the batch, outside (research/data/batch_augment.py).
    augment: Callable[[torch.Tensor, Any], torch.Tensor] | None = None
    augment_size: int = 0


@dataclass
class Loop:
    """Everything ``fit`` drives, built by :mod:`research.launch.train`."""

    state: TrainState
    data: TrainData
    objective: Objective
    tracker: Tracker
    run_dir: RunDir
    options: LoopOptions
    device: torch.device
    is_main: bool = True
    rank: int = 0
    meter: StepMeter | None = None  # the epoch's device-side sums; set while an epoch runs
    stop: StopSignal | None = None  # read between steps; see RunStopped
    _stop_group: Any = field(default=None, init=False, repr=False)  # the host-side group stop requests are combined in
    forward_loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] = field(init=False, repr=False)
    clock: Callable[[], float] = time.monotonic
    last_saved: float = field(init=False)  # clock() at the last checkpoint (or at the start of this life)

    def __post_init__(self) -> None:
        region = functools.partial(forward_and_loss, self)
        self.forward_loss = torch.compile(region, mode=self.options.compile_mode) if self.options.compile else region
        self.last_saved = self.clock()

    def save(self, *, best: bool = False) -> None:
        """Write the checkpoint, after checking (one sync each) that no step since the last check was
        non-finite and that the weights are finite."""
        if self.meter is not None:
            self.state.epoch_sums = self.meter.partial_epoch(self.state.step)
        self.state.raise_if_nonfinite_weights()
        self.run_dir.save(self.state, best=best)
        self.last_saved = self.clock()

    def epoch_checkpoint_due(self, *, improved: bool) -> bool:
        """Whether an epoch's end writes the checkpoint: always after the last epoch and for a new best
        (``best.pt``), else once ``train.checkpoint_every_s`` have passed since the last one, so that
        second-long epochs do not each pay for a save (issue 26). A skipped epoch is trained again
        by a resume, bit for bit, and its record is written again in place."""
        done = self.state.epoch >= self.options.epochs
        return done or improved or self.clock() - self.last_saved >= self.options.checkpoint_every_s

    def stop_requested(self) -> bool:
        """Whether to stop now; call it at the same point on every rank. Under DDP the ranks' requests are
        combined, so that all stop after the same step (a signal reaches each rank at its own moment):
        a one-number all-reduce on the host (gloo), which does not wait for the device."""
        if self.stop is None:
            return False
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.stop()
        if self._stop_group is None:
            self._stop_group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        signum = torch.tensor([self.stop.signum or 0])
        dist.all_reduce(signum, op=dist.ReduceOp.MAX, group=self._stop_group)
        if signum.item() and self.stop.signum is None:  # asked on another rank
            self.stop.signum = int(signum.item())
        return bool(signum.item())

    def stopped(self, saved: bool) -> RunStopped:
        """The exception that ends a stopped run (call once its checkpoint is written, or when nothing new trained)."""
        assert self.stop is not None and self.stop.signum is not None
        state = self.state
        done = f"{state.epoch} epochs" + (f" and {state.epoch_step} steps" if state.epoch_step else "")
        kept = f"saved in {self.run_dir.last}" if saved else "nothing new to save"
        return RunStopped(
            f"stopped by {self.stop.name} after step {state.step} ({done} done): {kept}; run the same command again to resume",
            exit_status=128 + self.stop.signum,
        )


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
        saved = loop.epoch_checkpoint_due(improved=improved)
        if saved:
            loop.save(best=improved)
        loop.tracker.log(record, step=state.step)
        if loop.is_main:
            log.info("epoch %d/%d: %s", state.epoch, options.epochs, _brief(record))
        if loop.stop_requested() and state.epoch < options.epochs:
            if not saved:
                loop.save()
            raise loop.stopped(saved=True)
    return record


def _brief(record: dict[str, Any]) -> str:
    keys = ("train/epoch_loss", "val/top1", "val/top5", "val_ema/top1", "train/epoch_images_per_s", "epoch_time_s")
    return ", ".join(f"{key} {record[key]:.4g}" for key in keys if key in record)


def evaluate_all(loop: Loop) -> dict[str, float]:
    """Validation metrics of the raw weights and, when kept, of the EMA weights."""
    precision, views = loop.options.precision, eval_views(loop.options)
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
    meter = loop.meter = StepMeter(loop.device, data.batch_size * data.world_size)
    if state.epoch_step and state.epoch_sums and loop.is_main:  # resumed mid-epoch: the steps before count too
        meter.resume_epoch(state.epoch_sums)
    state.epoch_sums = None
    if loop.stop_requested():  # asked before this epoch's first step: the last checkpoint stands
        raise loop.stopped(saved=False)
    for images, targets, *draws in _batches(loop, progress):
        train_step(loop, images, targets, meter, draws[0] if draws else None)
        if state.step % options.log_every_steps == 0:
            logs = {**meter.window(state.step), "train/lr": _lr(state.optimizer)}
            loop.tracker.log({**logs, "epoch": state.epoch}, step=state.step)
            progress.set_postfix(
                loss=f"{logs['train/loss']:.3f}", lr=f"{logs['train/lr']:.2e}", img_s=f"{logs['train/images_per_s']:.0f}"
            )
        if options.checkpoint_every_steps and state.step % options.checkpoint_every_steps == 0:
            loop.save()
        if loop.stop_requested() and state.epoch_step < data.steps_per_epoch:  # at the last step: finish the epoch
            loop.save()
            raise loop.stopped(saved=True)
    metrics = {**meter.epoch(state.step), "train/lr": _lr(state.optimizer)}
    state.epoch += 1
    state.epoch_step = 0
    # The reference steps timm's scheduler after each epoch with the index of the epoch just done
    # (`lr_scheduler.step(epoch)`), so epoch e trains at lr(e - 1). A per-update schedule ignores it.
    state.scheduler.step(state.epoch - 1)
    return metrics


def _batches(loop: Loop, batches: Iterable[Any]) -> Iterable[Any]:
    """The epoch's batches; a loader whose workers died of the same Ctrl-C that asked for a stop ends it."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError:
            if loop.stop is None or not loop.stop():  # this rank's request only: the others are not here
                raise
            loop.save()  # the state is that of the last finished step
            raise loop.stopped(saved=True) from None
        yield batch


def seed_step(seed: int, rank: int, step: int) -> None:
    """Put torch (every device), numpy and ``random`` on the ``("step", rank, step)`` stream of ``seed``."""
    seeding.seed_globals(seed, "step", rank, step)


def train_step(
    loop: Loop, images: torch.Tensor, targets: torch.Tensor, meter: StepMeter | None = None, draws: Any = None
) -> torch.Tensor:
    """One optimisation step; returns the detached loss, and adds it and its parts to ``meter``.
    With ``draws``, ``images`` are the batch's uint8 pixels, which ``loop.data.augment`` transforms
    inside the compiled region."""
    state, device = loop.state, loop.device
    if loop.options.seed is not None:
        seed_step(loop.options.seed, loop.rank, state.step)
    images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
    if draws is None:
        shape = images.shape
        if loop.options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
    else:
        size = loop.data.augment_size
        shape = (len(images), 3, size, size)
    mixing = loop.data.mix.draw(shape, device) if loop.data.mix is not None else None  # numpy's draws, on the host
    state.optimizer.zero_grad(set_to_none=True)
    if loop.options.compile and loop.options.compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are read (meter) and done with
    loss, logs = loop.forward_loss(images, targets, mixing, draws)
    _backward_and_step(loop, loss)
    state.scheduler.step_update(num_updates=state.step)  # a per-epoch schedule ignores it
    loss = loss.detach()
    if meter is not None:
        meter.add(loss, logs)
    # The update and its records are one unit for a preemption checkpoint (research/launch/backends/slurm.py):
    # saved between the two, the checkpoint would count one step more than its epoch's loss sums.
    state.updating = False
    return loss


def forward_and_loss(
    loop: Loop, images: torch.Tensor, targets: torch.Tensor, mixing: torch.Tensor | None, draws: Any = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The step's compiled region: the batch's augmentation (with ``draws``: ``images`` are its uint8
    pixels), the batch mixed by its draws, the student's forward, the objective (the teacher's forward
    inside it); returns the loss and its detached parts."""
    if draws is not None:
        assert loop.data.augment is not None, "batches with draws need TrainData.augment"
        images = loop.data.augment(images, draws)
        if loop.options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
    if loop.data.mix is not None:
        images, targets = loop.data.mix.apply(images, targets, mixing)
    with autocast(loop.device, loop.options.precision):
        outputs = loop.state.model(images)
        result = loop.objective(images, outputs, targets)
    return result.loss, dict(result.logs)


def _backward_and_step(loop: Loop, loss: torch.Tensor) -> None:
    # A disabled GradScaler (every precision but fp16) passes the loss and the step straight through.
    state, scaler = loop.state, loop.state.scaler
    scaler.scale(loss).backward()
    scaler.unscale_(state.optimizer)
    if loop.options.clip_grad:
        nn.utils.clip_grad_norm_(state.model.parameters(), loop.options.clip_grad)
    state.updating = True  # until train_step has recorded the step: a preemption checkpoint now would be half of it
    scaler.step(state.optimizer)
    scaler.update()
    if state.ema is not None:
        # timm's ModelEmaV3.update(step=s) copies the weights at s = 0 and 1; step=None decays from
        # the first update, as timm's ModelEma (the reference's) does.
        state.ema.update(unwrap(state.model), step=state.step if loop.options.ema_copy_first else None)
    state.step += 1
    state.epoch_step += 1


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
