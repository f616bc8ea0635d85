"""What a run needs from the machine it trains on, checked before anything is written.

The config loader checks what a file says; some problems show only on the machine that trains: fp16
without a GPU, a batch larger than the data each process gets, data that is missing or unreadable, a
cache that cannot be written, a teacher trained on another class count. :func:`preflight` finds them
before a run dir is made or its lock taken (``research train`` checks every run it will train, the
job itself checks again on its node), one line each, and cheaply: it looks at files, never reads a
dataset through or extracts it, and counts images only where their number is known without listing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from research.config import ConfigError, Run
from research.config.components import SECTIONS, build_component
from research.data import build_train_sampler
from research.data.datasets import check_ready
from research.launch.cost import dataset_sizes
from research.registry import model_img_size

__all__ = ["preflight"]


def preflight(runs: Sequence[Run], *, device: torch.device, world_size: int, check_data: bool = True) -> None:
    """Raise ConfigError (or DataError) for the first run of ``runs`` that cannot train here.

    Args:
        runs: the runs about to train (not those already finished).
        device: the device they will train on.
        world_size: the processes each run trains with.
        check_data: whether the data must be readable from here (False where a job is submitted: its
            nodes may mount data the submitting machine does not; the job checks it on its node).
    """
    for run in runs:
        cfg = run.cfg
        if cfg.train.precision == "fp16" and device.type != "cuda":
            where = "this machine has none" if check_data else "its job asks for none (resources.gpus_per_node=0)"
            raise ConfigError(f"{run.name}: train.precision=fp16 needs a GPU and {where}; use bf16 or fp32")
        if check_data:
            check_ready(cfg.data)
        _check_batch_fits(run, world_size)
        _check_teacher_classes(run)


def _check_batch_fits(run: Run, world_size: int) -> None:
    """At least one full batch per process and epoch (the loader drops the last, partial one)."""
    cfg = run.cfg
    sizes = dataset_sizes(cfg, count_files=False)
    if isinstance(sizes, str):  # not known without listing the data: the loader checks it when it builds
        return
    repeats = build_component(SECTIONS["aug"], cfg.aug, img_size=model_img_size(cfg.model)).repeats
    single = world_size == 1 and not cfg.loader.repeated_aug_single_process
    # the sampler's own length: repeated augmentation and padding to equal shares included
    sampler = build_train_sampler(
        range(sizes[0]), repeats=1 if single else repeats, num_replicas=world_size, rank=0, seed=cfg.seed
    )
    if len(sampler) < cfg.loader.batch_size:
        raise ConfigError(
            f"{run.name}: loader.batch_size={cfg.loader.batch_size} is larger than the {len(sampler)} training images each "
            f"of the {world_size} process{'es' if world_size > 1 else ''} gets, so an epoch has no step; lower loader.batch_size"
        )


def _check_teacher_classes(run: Run) -> None:
    """A teacher linked from another experiment was trained on its dataset's classes: they must be the student's."""
    teacher = run.teacher_run
    if teacher is None:
        return
    ours, theirs = dataset_sizes(run.cfg, count_files=False), dataset_sizes(teacher.cfg, count_files=False)
    if isinstance(ours, str) or isinstance(theirs, str) or ours[2] == theirs[2]:
        return
    raise ConfigError(
        f"{run.name}: teacher.from_experiment {teacher.source.name} trains on {theirs[2]} classes "
        f"(data.name={teacher.cfg.data['name']}), the student's data has {ours[2]}; link a teacher trained on the student's dataset"
    )
