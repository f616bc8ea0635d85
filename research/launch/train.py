"""One run, from its validated config to a finished run dir: the pipeline every launcher calls.

``train(run)`` reads like a table of contents: data, teacher, model, objective, optimizer, state
(resumed when the run dir holds a checkpoint), tracker, then the engine's ``fit``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import yaml
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from research.config import ConfigError, ExperimentCfg, Run
from research.config.components import SECTIONS, build_component
from research.engine.checkpoint import load as load_checkpoint
from research.engine.evaluate import AUTOCAST_DTYPES, evaluate
from research.engine.fit import Loop, fit
from research.engine.lookahead import ScheduledLookahead
from research.engine.run_dir import CONFIG, RunDir, start_life
from research.engine.state import TrainState, unwrap
from research.launch import provenance
from research.launch.data import RunData, build_data
from research.launch.dist import DistEnv, init_distributed
from research.launch.tracking import build_tracker
from research.losses import build_base_criterion
from research.models.finetune import load_for_finetune
from research.registry import LOSSES, MODELS

log = logging.getLogger(__name__)


def train(run: Run, *, env: DistEnv | None = None, on_loop: Callable[[Loop], None] | None = None) -> dict[str, Any]:
    """Train ``run`` to its last epoch, resuming from its run dir; returns the summary."""
    env = env or init_distributed()
    cfg = run.cfg
    if cfg.train.threads:  # on a small CPU, loader workers and compute threads compete for the same cores
        torch.set_num_threads(cfg.train.threads)
    _seed_everything(cfg.seed + env.rank)
    record = resolved_config(run)
    run_dir = RunDir(run.run_dir, config=record, is_main=env.is_main)
    life = 0
    if env.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / CONFIG).write_text(yaml.safe_dump(record, sort_keys=False))
        life = start_life(run.run_dir, job_id=_slurm_job_id())
    data = build_data(cfg, env)
    teacher = build_teacher(cfg, data.num_classes, env)
    model = build_model(cfg, data.num_classes, env)
    objective = build_component(
        SECTIONS["loss"],
        cfg.loss,
        base_criterion=build_base_criterion(mixup_active=data.recipe.mixup_active, label_smoothing=cfg.train.label_smoothing),
        teacher=teacher,
    )
    state = build_state(cfg, model, data, env)
    resumed = _resume(cfg, state, run_dir)
    tracker = build_tracker(run, record, data, model, env, life)
    loop = Loop(
        state, data.loop_data, objective, tracker, run_dir, cfg.train, env.device,
        clip_grad=cfg.optim.clip_grad, is_main=env.is_main, ema_copy_first=cfg.train.ema_copy_first,
    )  # fmt: skip
    if on_loop is not None:
        on_loop(loop)
    try:
        if teacher is not None and not resumed:
            _log_teacher(loop, teacher)
        _log_start(run, data, model, state, resumed, env)
        last = fit(loop)
        summary = _summary(state, cfg, last, "done")
        run_dir.write_summary(summary)
        tracker.summary(summary)
        return summary
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
        run_dir.write_summary({**_summary(state, cfg, {}, status), "error": repr(exc)[:500]})
        raise
    finally:
        tracker.close()


def resolved_config(run: Run) -> dict[str, Any]:
    """The run's config as saved in ``config.yaml`` and sent to W&B, with code provenance."""
    record = dataclasses.asdict(run.cfg)
    record.pop("ablation")
    return {**record, "run_name": run.name, "git": provenance.git_info(), "versions": provenance.versions()}


def build_model(cfg: ExperimentCfg, num_classes: int, env: DistEnv) -> nn.Module:
    model = build_component(SECTIONS["model"], cfg.model, num_classes=num_classes)
    for module in model.modules():  # timm attention blocks carry the switch
        if hasattr(module, "fused_attn"):
            module.fused_attn = cfg.train.fused_attention
    if cfg.finetune.checkpoint:
        saved = load_checkpoint(cfg.finetune.checkpoint)
        load_for_finetune(model, saved.get("model", saved), interpolation=cfg.finetune.interpolation)
    model.to(env.device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        model = torch.compile(model, mode=cfg.train.compile_mode)  # type: ignore[assignment]
    if env.distributed:
        # A distillation head that no loss trains gets no gradient, which DDP must be told about.
        unused = MODELS.info(cfg.model["name"]).distilled and not LOSSES.info(cfg.loss["name"]).needs_teacher
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=unused)
    return model


def build_teacher(cfg: ExperimentCfg, num_classes: int, env: DistEnv) -> nn.Module | None:
    """The frozen teacher, when the loss distils (built before the student: a bad checkpoint fails fast)."""
    if cfg.teacher is None or not LOSSES.info(cfg.loss["name"]).needs_teacher:
        return None
    teacher = build_component(SECTIONS["teacher"], cfg.teacher, num_classes=num_classes)
    # The teacher runs as the student: channels-last when the run is, its weights in the run's
    # autocast dtype (no per-step casts), in inference mode (Teacher.forward).
    dtype = AUTOCAST_DTYPES.get(cfg.train.precision)
    return teacher.to(env.device).for_run(channels_last=cfg.train.channels_last, dtype=dtype)


def build_state(cfg: ExperimentCfg, model: nn.Module, data: RunData, env: DistEnv) -> TrainState:
    if cfg.train.precision == "fp16" and env.device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a GPU; use bf16 or fp32 on a CPU")
    lr = cfg.optim.lr
    if cfg.optim.scale_lr:  # DeiT section 6: lr = 5e-4 x global batch / 512
        lr *= cfg.loader.batch_size * env.world_size / 512
    extra = {key: getattr(cfg.optim, key) for key in ("eps", "betas") if getattr(cfg.optim, key) is not None}
    extra.update(optimizer_implementation(cfg.optim.implementation))
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
    if cfg.sched.warmup_prefix:
        if cfg.sched.warmup_epochs >= cfg.train.epochs:
            raise ConfigError(
                f"sched.warmup_prefix: the warm-up ({cfg.sched.warmup_epochs} epochs) leaves no decay in train.epochs="
                f"{cfg.train.epochs}; shorten sched.warmup_epochs"
            )
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


def optimizer_implementation(choice: str) -> dict[str, bool]:
    """The optimizer keywords for ``optim.implementation`` (validated against the class by the config loader)."""
    return {"auto": {}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}, "fused": {"fused": True}}[choice]


def _resume(cfg: ExperimentCfg, state: TrainState, run_dir: RunDir) -> bool:
    if not cfg.train.resume:
        return False
    saved = run_dir.resume_point()
    if saved is None:
        return False
    state.load_state_dict(saved)
    run_dir.truncate_metrics(state.epoch)
    return True


def _slurm_job_id() -> str | None:
    """``123_4`` for task 4 of array job 123 (as squeue and slurm_job.json name it), else the job id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _log_teacher(loop: Loop, teacher: nn.Module) -> None:
    """The teacher on the validation set, as ``teacher/*``: ``teacher/top1`` with the views this run
    evaluates with (train.eval_hflip / eval_translate), comparable to its ``val/top1``, and
    ``teacher/top1_single_view`` of one view per image, the way the student sees the teacher in
    training. The teacher's own run reports its ``val/top1`` with its own views."""
    options = loop.options
    views = {"hflip": options.eval_hflip, "translate": options.eval_translate}
    metrics = evaluate(teacher, loop.data.val_loader, loop.device, options.precision, **views)
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
        "%s: %s; %d train / %d val images, %d classes, %d processes%s on %s; %s",
        run.name, run.run_dir, data.train_size, data.val_size, data.num_classes, env.world_size,
        " (DDP)" if env.distributed else "", env.device.type, where,
    )


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
        "finished_at": time.time() if status == "done" else None,
    }
