"""One run, from its validated config to a finished run dir: the pipeline every launcher calls.

``train(run)`` reads like a table of contents: the run's parts (:func:`assemble`: data, teacher, model,
objective, optimizer, state, Loop), the resume when the run dir holds a checkpoint, the tracker, then the
engine's ``fit``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from research import seeding
from research.config import ConfigError, ExperimentCfg, Run
from research.config.components import SECTIONS, build_component
from research.engine.checkpoint import CheckpointError
from research.engine.checkpoint import load as load_checkpoint
from research.engine.evaluate import AUTOCAST_DTYPES, eval_views, evaluate
from research.engine.fit import Loop, LoopOptions, RunStopped, fit
from research.engine.lookahead import ScheduledLookahead
from research.engine.run_dir import (
    CANCELLED,
    DONE,
    FAILED,
    INTERRUPTED,
    STOPPED,
    RunDir,
    note_life,
    read_lives,
    start_life,
    write_config,
)
from research.engine.state import TrainState, unwrap
from research.launch.backends import backend_of
from research.launch.dist import DistEnv, init_distributed
from research.launch.preflight import preflight
from research.launch.run_check import Verdict, check, config_record, resolved_config, run_dir_lock, teacher_note
from research.launch.run_data import RunData, build_data
from research.launch.run_tracker import build_tracker, log_preview
from research.launch.stop import StopRequest, stop_on_signals
from research.losses import build_base_criterion
from research.models.finetune import load_for_finetune
from research.registry import LOSSES, MODELS
from research.teachers import Teacher, teacher_network
from research.tracking.null import NullTracker

log = logging.getLogger(__name__)


def train(run: Run, *, env: DistEnv | None = None, on_loop: Callable[[Loop], None] | None = None) -> dict[str, Any]:
    """Train ``run`` to its last epoch, resuming from its run dir; returns the summary.

    The run dir must hold this config (or nothing): see :mod:`research.launch.run_check`. Rank 0 holds
    the run dir's lock throughout (the only lock on it); SIGTERM and Ctrl-C stop the run after
    the step in progress, saved (:mod:`research.launch.stop`).
    """
    env = env or init_distributed()
    preflight([run], device=env.device, world_size=env.world_size)  # before the run dir is written
    with _one_writer(run, env) as notes, stop_on_signals() as stop:
        return _train(run, env, notes, stop, on_loop)


def _train(
    run: Run, env: DistEnv, notes: dict[str, Any], stop: StopRequest, on_loop: Callable[[Loop], None] | None
) -> dict[str, Any]:
    cfg = run.cfg
    record = resolved_config(run)
    run_dir = RunDir(run.run_dir, config=record, is_main=env.is_main)
    life = 0
    if env.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run.run_dir, record)
        life = start_life(run.run_dir, job_id=backend_of(run).current_job(), git=record["git"], **notes)
        run_dir.remove_leftovers()  # under the lock: temporary files of saves a kill cut short
    try:
        parts = assemble(run, env, run_dir=run_dir, stop=stop)
    except RunStopped:  # while the data was prepared (a first extraction)
        summary = {"status": STOPPED, "epochs_done": None, "epochs": cfg.train.epochs, **_stopped(run, stop)}
        run_dir.write_summary(summary, ending=True)
        raise
    data, teacher, loop = parts.data, parts.teacher, parts.loop
    state, model = loop.state, loop.state.model
    resumed = _resume(cfg, state, run_dir)
    if env.is_main:
        _note_schedule(run_dir, life, from_epoch=state.epoch, epochs=cfg.train.epochs)
    tracker = loop.tracker = build_tracker(run, record, data, model, env, life)
    if on_loop is not None:
        on_loop(loop)
    try:
        if teacher is not None and not resumed:
            _log_teacher(loop, teacher)
        if env.is_main and not resumed:  # what this variant's recipe does to the images, once per run
            log_preview(tracker, data.loop_data, seed=cfg.seed, rank=env.rank, caption=run.name)
        _log_start(run, data, model, state, resumed, env)
        last = fit(loop)
        summary = _summary(state, cfg, last, DONE)
        run_dir.write_summary(summary)
        tracker.summary(summary)
        return summary
    except RunStopped:
        run_dir.write_summary({**_summary(state, cfg, {}, STOPPED), **_stopped(run, stop)}, ending=True)
        raise
    except BaseException as exc:
        status = INTERRUPTED if isinstance(exc, (KeyboardInterrupt, SystemExit)) else FAILED
        run_dir.write_summary({**_summary(state, cfg, {}, status), "error": repr(exc)[:500]}, ending=True)
        raise
    finally:
        tracker.close()


@dataclass
class RunParts:
    """A run's assembled parts: its data, its frozen teacher (None when the loss does not distil) and the
    :class:`Loop` over the rest (student, objective, optimizer, schedule, state)."""

    data: RunData
    teacher: nn.Module | None
    loop: Loop


def assemble(
    run: Run, env: DistEnv | None = None, *, data: RunData | None = None, teacher_weights: bool = True,
    run_dir: RunDir | None = None, stop: StopRequest | None = None,
) -> RunParts:  # fmt: skip
    """``run``'s parts as :func:`train` builds them (seeded as it seeds them), writing nothing: no run dir,
    lock, tracker (the Loop's records nothing) or resume. ``data`` replaces the data of the config (random
    images to time a step on), ``teacher_weights=False`` gives the teacher random weights, ``run_dir`` is
    where the Loop saves (default: the run's, unwritten until it saves), ``stop`` the run's stop request."""
    env = env or init_distributed()
    cfg = run.cfg
    if cfg.train.threads:  # on a small CPU, loader workers and compute threads compete for the same cores
        torch.set_num_threads(cfg.train.threads)
    _seed_globals(cfg, env)
    if data is None:
        with stop.at_once("preparing the data") if stop is not None else contextlib.nullcontext():
            data = build_data(cfg, env)
    if cfg.train.reference_init:  # the reference's order: the student's init follows what was drawn before
        model = build_model(cfg, data.num_classes, env)
        teacher = build_teacher(cfg, data.num_classes, env, weights=teacher_weights)
    else:  # every variant starts from the same student, whatever teacher it builds (research/seeding.py)
        teacher = build_teacher(cfg, data.num_classes, env, weights=teacher_weights)
        with seeding.fork(cfg.seed, "init"):
            model = build_model(cfg, data.num_classes, env)
    mixup_active = data.loop_data.mix is not None  # soft targets
    criterion = build_base_criterion(mixup_active=mixup_active, label_smoothing=cfg.train.label_smoothing)
    objective = build_component(SECTIONS["loss"], cfg.loss, base_criterion=criterion, teacher=teacher)
    state = build_state(cfg, model, data, env)
    options = LoopOptions.of(cfg.train, clip_grad=cfg.optim.clip_grad, seed=cfg.seed)
    run_dir = run_dir or RunDir(run.run_dir, config=config_record(run), is_main=env.is_main)
    loop = Loop(
        state, data.loop_data, objective, NullTracker(), run_dir, options, env.device,
        is_main=env.is_main, rank=env.rank, stop=stop,
    )  # fmt: skip
    return RunParts(data, teacher, loop)


@contextlib.contextmanager
def _one_writer(run: Run, env: DistEnv) -> Iterator[dict[str, Any]]:
    """On rank 0: check the run dir against the config, then hold its lock for the block, and check
    its teacher; yields what this life notes in ``lives.jsonl``. A refusal reaches every rank, so none
    waits for the others."""
    stack = contextlib.ExitStack()
    error: Exception | None = None
    notes: dict[str, Any] = {}
    if env.is_main:
        try:
            verdict = check(run, launching=False)  # what to replace, its launcher replaced
            stack.enter_context(run_dir_lock(run.run_dir, job_id=backend_of(run).current_job()))
            notes = {**_life_notes(verdict), **teacher_note(run)}
        except (ConfigError, CheckpointError) as exc:
            stack.close()
            error = exc
    if env.distributed:
        message = [str(error) if error else None]
        dist.broadcast_object_list(message, src=0)
        if message[0] and error is None:
            raise ConfigError(message[0])
    if error is not None:
        raise error
    with stack:
        yield notes


def _stopped(run: Run, stop: StopRequest) -> dict[str, Any]:
    """How a stopped life ended, for its summary: ``status`` cancelled (scancel) or stopped, and by what."""
    job_state = backend_of(run).stop_state()
    status = CANCELLED if job_state == "CANCELLED" else STOPPED
    return {"status": status, "stopped_by": stop.name, "slurm_state": job_state}


def _life_notes(verdict: Verdict | None) -> dict[str, Any]:
    """What this life changed in the run's config (execution keys; ``train.epochs`` grown), for ``lives.jsonl``."""
    if verdict is None:
        return {}
    notes: dict[str, Any] = {}
    if verdict.changed:
        notes["changed"] = {key: list(values) for key, values in verdict.changed.items()}
    if verdict.epochs_extended:
        notes["epochs_extended"] = list(verdict.epochs_extended)
        log.info("%s: train.epochs extended from %d to %d", verdict.run.name, *verdict.epochs_extended)
    return notes


def _note_schedule(run_dir: RunDir, life: int, *, from_epoch: int, epochs: int) -> None:
    """Record the lr schedule this life trains with (``schedule`` in ``lives.jsonl``); once a grown
    ``train.epochs`` changed it, ``config.yaml`` lists every schedule that ran (``schedules``: from which
    epoch, for how many epochs in all), since its ``train.epochs`` alone names only the last one."""
    note_life(run_dir.path, life, schedule={"from_epoch": from_epoch, "epochs": epochs})
    schedules: list[dict[str, int]] = []
    for entry in read_lives(run_dir.path):
        ran = entry.get("schedule")
        if ran and (not schedules or schedules[-1]["epochs"] != ran["epochs"]):
            schedules.append(dict(ran))
    if len(schedules) > 1:
        run_dir.config = {**run_dir.config, "schedules": schedules}
        write_config(run_dir.path, run_dir.config)


def build_model(cfg: ExperimentCfg, num_classes: int, env: DistEnv) -> nn.Module:
    model = build_component(SECTIONS["model"], cfg.model, num_classes=num_classes)
    for module in model.modules():  # timm attention blocks carry the switch
        if hasattr(module, "fused_attn"):
            module.fused_attn = cfg.train.fused_attention
    if cfg.finetune.checkpoint:
        saved = load_checkpoint(cfg.finetune.checkpoint)
        try:
            load_for_finetune(model, saved.get("model", saved), interpolation=cfg.finetune.interpolation)
        except ValueError as exc:  # another architecture: name the file and both models
            trained = (saved.get("config") or {}).get("model", {}).get("name", "unknown")
            raise ConfigError(
                f"finetune.checkpoint {cfg.finetune.checkpoint} holds model {trained!r}, the experiment builds "
                f"{cfg.model['name']!r}: {exc}"
            ) from None
    model.to(env.device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    if env.distributed:
        # A distillation head that no loss trains gets no gradient, which DDP must be told about.
        unused = MODELS.info(cfg.model["name"]).distilled and not LOSSES.info(cfg.loss["name"]).needs_teacher
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=unused)
    return model


def build_teacher(cfg: ExperimentCfg, num_classes: int, env: DistEnv, *, weights: bool = True) -> nn.Module | None:
    """The frozen teacher, when the loss distils (built before the student: a bad checkpoint fails fast);
    without ``weights``, its network with random weights (its speed does not depend on them)."""
    if cfg.teacher is None or not LOSSES.info(cfg.loss["name"]).needs_teacher:
        return None
    if weights:
        teacher = build_component(SECTIONS["teacher"], cfg.teacher, num_classes=num_classes)
    else:
        name, section = cfg.teacher["name"], cfg.teacher
        net = teacher_network(name, num_classes=num_classes, arch=section.get("arch"))
        teacher = Teacher(net, name=name, num_classes=num_classes, channels_last=bool(section.get("channels_last")))
    # The teacher runs as the student: channels-last when the run is, its weights in the run's
    # autocast dtype (no per-step casts; train.teacher_fp32 keeps them fp32), in inference mode (Teacher.forward).
    dtype = None if cfg.train.teacher_fp32 else AUTOCAST_DTYPES.get(cfg.train.precision)
    return teacher.to(env.device).for_run(channels_last=cfg.train.channels_last, dtype=dtype)


def build_state(cfg: ExperimentCfg, model: nn.Module, data: RunData, env: DistEnv) -> TrainState:
    if cfg.train.precision == "fp16" and env.device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a GPU; use bf16 or fp32 on a CPU")
    lr = cfg.optim.lr
    if cfg.optim.scale_lr:  # DeiT section 6: lr = 5e-4 x global batch / 512
        lr *= cfg.loader.batch_size * env.world_size / 512
    extra = {key: getattr(cfg.optim, key) for key in ("eps", "betas") if getattr(cfg.optim, key) is not None}
    extra.update(optimizer_implementation(cfg.optim.implementation, cfg.optim.name, env.device))
    optimizer = create_optimizer_v2(
        _param_groups(cfg, model), opt=cfg.optim.name, lr=lr, weight_decay=cfg.optim.weight_decay,
        momentum=cfg.optim.momentum, **extra,
    )  # fmt: skip
    if cfg.optim.lookahead_every:
        optimizer = ScheduledLookahead(
            optimizer,
            total_steps=cfg.train.epochs * data.loop_data.steps_per_epoch,
            k=cfg.optim.lookahead_every,
            max_decay=cfg.optim.lookahead_max_decay,
        )
    steps_per_epoch = data.loop_data.steps_per_epoch
    # With warmup_prefix timm runs the decay for num_epochs *after* the warm-up: shorten it so the
    # schedule ends with the last step (in steps, as warm-ups of a fraction of an epoch are common here).
    decay_epochs: float = cfg.train.epochs
    if cfg.sched.warmup_prefix:  # the loader refused a warm-up as long as training (research/config/checks.py)
        decay_epochs = round((cfg.train.epochs - cfg.sched.warmup_epochs) * steps_per_epoch) / steps_per_epoch
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched.name,
        num_epochs=decay_epochs,  # type: ignore[arg-type]
        warmup_epochs=cfg.sched.warmup_epochs,
        warmup_lr=cfg.sched.warmup_lr,
        min_lr=cfg.sched.min_lr,
        decay_rate=cfg.sched.decay_rate,
        warmup_prefix=cfg.sched.warmup_prefix,
        step_on_epochs=cfg.sched.step_on == "epoch",  # the engine steps it both ways; timm ignores the other
        updates_per_epoch=steps_per_epoch,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.precision == "fp16")
    ema = ModelEmaV3(unwrap(model), decay=cfg.train.ema_decay) if cfg.train.ema else None
    return TrainState(model, optimizer, scheduler, scaler, ema)


def _param_groups(cfg: ExperimentCfg, model: nn.Module) -> list[dict[str, Any]]:
    """Weight decay on every weight but 1-d ones and the model's ``no_weight_decay()`` names, read from
    the plain module (a DDP wrapper has no ``no_weight_decay``); ``optim.decay_dist_token`` decays the
    distillation token as the reference's timm 0.3.2 did."""
    plain = unwrap(model)
    exempt = set(getattr(plain, "no_weight_decay", set)())
    if cfg.optim.decay_dist_token:
        exempt.discard("dist_token")
    return param_groups_weight_decay(plain, cfg.optim.weight_decay, no_weight_decay_list=exempt)


def optimizer_implementation(choice: str, name: str, device: torch.device) -> dict[str, bool]:
    """The optimizer keywords for ``optim.implementation`` (validated against the class by the config loader).

    ``auto`` is fused on CUDA where the optimizer's class has a fused kernel (torch's Adam, AdamW, SGD):
    one launch for the whole update, where torch's own default, foreach, issues ~300 host-side scalar
    ops a step for a DeiT (issue 26). Elsewhere it is torch's choice.
    """
    if choice == "auto":
        return {"fused": True} if device.type == "cuda" and _has_fused_kernel(name) else {}
    return {"foreach": {"foreach": True}, "for_loop": {"foreach": False}, "fused": {"fused": True}}[choice]


def _has_fused_kernel(name: str) -> bool:
    import timm.optim

    try:  # the class timm's create_optimizer_v2 builds for this name, as the config loader finds it
        opt_class = timm.optim.get_optimizer_class(name.lower().split("_")[-1], bind_defaults=False)  # type: ignore[attr-defined]
    except (KeyError, ValueError):
        return False
    return "fused" in inspect.signature(opt_class).parameters


def _resume(cfg: ExperimentCfg, state: TrainState, run_dir: RunDir) -> bool:
    saved = run_dir.resume_point() if cfg.train.resume else None
    if saved is None:  # from scratch: no record of an earlier start may stay (a deleted last.pt)
        run_dir.truncate_metrics(-1)
        return False
    state.load_state_dict(saved)
    run_dir.truncate_metrics(state.epoch)
    return True


def _seed_globals(cfg: ExperimentCfg, env: DistEnv) -> None:
    """The global generators at start: the ``("process", rank)`` stream, or the reference's seed + rank."""
    if cfg.train.reference_init:  # DeiT's main.py: torch.manual_seed(seed + rank), np.random.seed(seed + rank)
        random.seed(cfg.seed + env.rank)
        np.random.seed((cfg.seed + env.rank) % 2**32)
        torch.manual_seed(cfg.seed + env.rank)
    else:
        seeding.seed_globals(cfg.seed, "process", env.rank)


def _log_teacher(loop: Loop, teacher: nn.Module) -> None:
    """The teacher on the validation set, as ``teacher/*``: ``teacher/top1`` with the views this run
    evaluates with (train.eval_hflip / eval_translate), comparable to its ``val/top1``, and
    ``teacher/top1_single_view`` of one view per image, the way the student sees the teacher in
    training. The teacher's own run reports its ``val/top1`` with its own views."""
    metrics = evaluate(teacher, loop.data.val_loader, loop.device, loop.options.precision, **eval_views(loop.options))
    metrics.setdefault("top1_single_view", metrics["top1"])  # one view: the same number
    record = {f"teacher/{k}": v for k, v in metrics.items()}
    loop.tracker.log(record, step=loop.state.step)
    loop.run_dir.append_metrics({"epoch": 0, **record})
    if loop.is_main:
        log.info(
            "teacher: top-1 %.2f%% (single view %.2f%%), top-5 %.2f%% on the validation set",
            metrics["top1"], metrics["top1_single_view"], metrics["top5"],
        )  # fmt: skip


def _log_start(run: Run, data: RunData, model: nn.Module, state: TrainState, resumed: bool, env: DistEnv) -> None:
    if not env.is_main:
        return
    where = f"resumed at epoch {state.epoch}, step {state.step}" if resumed else "from scratch"
    log.info(
        "%s: %s; %d train / %d val images, %d classes, %d processes%s on %s; %s", run.name, run.run_dir, data.train_size,
        data.val_size, data.num_classes, env.world_size, " (DDP)" if env.distributed else "", env.device.type, where,
    )  # fmt: skip


def _summary(state: TrainState, cfg: ExperimentCfg, last: dict[str, Any], status: str) -> dict[str, Any]:
    return {
        "status": status,
        "epochs_done": state.epoch,
        "epochs": cfg.train.epochs,
        "best_top1": state.best_top1 if state.best_top1 > float("-inf") else None,
        "last_top1": last.get("val/top1"),
        "last_top5": last.get("val/top5"),
        "images_per_s": last.get("train/epoch_images_per_s"),
        "wall_time_s": state.wall_time_s,
        "finished_at": time.time() if status == DONE else None,
    }
