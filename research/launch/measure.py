"""Measure the throughput rows an experiment's runs need, on this machine: ``research throughput``.

For every distinct key of the runs (student, image size, per-device batch, precision, teacher) it
times the engine's own training step (:func:`research.engine.fit.train_step` on the run's parts as
:func:`research.launch.train.assemble` builds them: forward, the run's objective with its teacher's
forward, backward, optimizer step) and a forward pass at the evaluation
batch size, on random images already on the device. So the rows have ``scope=step``: the data path
(decoding, augmentation, mixup) is not in them. The teacher is the teacher's architecture with random
weights (its speed does not depend on them), so no checkpoint is needed.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from research.config import ConfigError, Run
from research.engine.evaluate import autocast
from research.engine.fit import TrainData, train_step
from research.launch import provenance
from research.launch.cost import Throughput, dataset_sizes, display_path, run_key
from research.launch.dist import DistEnv
from research.launch.run_data import RunData
from research.launch.train import assemble

__all__ = ["check_device_name", "measure_runs", "measure_throughput"]


def check_device_name(name: str, device: torch.device) -> None:
    """Refuse a ``--device`` name that does not describe ``device``: a row must not be filed under another GPU."""
    if device.type == "cuda":
        actual = torch.cuda.get_device_name(device)
        if name.lower() not in actual.lower().replace(" ", "-") and name.lower() not in actual.lower():
            raise ConfigError(f"--device {name}: this GPU is {actual!r}; name it by its type (e.g. {actual.split()[-1].lower()})")
    elif not name.lower().startswith("cpu"):
        raise ConfigError(f"--device {name}: there is no GPU here; CPU rows are named cpu-... (e.g. cpu-epyc-2c)")


def measure_runs(runs: Sequence[Run], *, device_name: str, steps: int = 20, warmup: int = 5) -> list[Throughput]:
    """One measured row per distinct table key among ``runs`` (their teachers' own runs are not measured)."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    check_device_name(device_name, device)
    rows: dict[tuple[Any, ...], Throughput] = {}
    for run in runs:
        key = run_key(run.cfg, device_name)
        if key not in rows:
            rows[key] = measure_throughput(run, device_name=device_name, device=device, steps=steps, warmup=warmup)
    return list(rows.values())


def measure_throughput(
    run: Run, *, device_name: str, device: torch.device, steps: int = 20, warmup: int = 5, source: str = ""
) -> Throughput:
    """Train and eval images/s of ``run``'s step on ``device`` (random data; see the module docstring): the
    ``scope=step`` row of ``research throughput`` and of ``bench/throughput.py --record-table`` (``source``)."""
    cfg = run.cfg
    sizes = dataset_sizes(cfg)
    classes = sizes[2] if not isinstance(sizes, str) else 1000
    key = run_key(cfg, device_name)
    img_size, batch = key[1], cfg.loader.batch_size
    # random images already on the device: no data path, no mixing (the loss takes hard targets)
    data = RunData(TrainData(lambda epoch, skip: [], max(steps + warmup, 1), [], None, batch), classes, None, 0, 0)
    loop = assemble(run, DistEnv(device=device), data=data, teacher_weights=False).loop
    model = loop.state.model
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    targets = torch.randint(0, classes, (batch,), device=device)
    model.train()
    train_rate = batch / _seconds_per_call(lambda: train_step(loop, images, targets), device, steps, warmup)
    eval_batch = cfg.loader.eval_batch_size or 2 * batch
    eval_images = torch.randn(eval_batch, 3, img_size, img_size, device=device)
    if cfg.train.channels_last:
        eval_images = eval_images.contiguous(memory_format=torch.channels_last)
    model.eval()

    @torch.no_grad()
    def forward() -> Any:
        with autocast(device, cfg.train.precision):
            return model(eval_images)

    eval_rate = eval_batch / _seconds_per_call(forward, device, max(steps // 2, 1), max(warmup // 2, 1))
    commit = provenance.git_info().get("commit") or "unknown commit"
    source = source or f"research throughput {display_path(run.source)}" + (f" --only {run.variant}" if run.variant else "")
    return Throughput(
        *key[:4], device=device_name, teacher=key[5], scope="step", train_img_s=round(train_rate, 1),
        eval_img_s=round(eval_rate, 1), measured=f"{datetime.date.today()} at {str(commit)[:7]}",
        source=f"{source} (engine step on random data, {steps} steps, {torch.get_num_threads()} threads)",
    )


def _seconds_per_call(call: Callable[[], Any], device: torch.device, steps: int, warmup: int) -> float:
    """Mean seconds per call over ``steps`` calls after ``warmup`` calls, synchronised on a GPU."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        call()
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        call()
    sync()
    return (time.perf_counter() - started) / steps
