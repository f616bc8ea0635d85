"""A tiny synthetic experiment that trains in seconds on a CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

TINY = {
    "model": {"name": "deit_nano_patch4_32", "img_size": 32},
    "data": {"name": "synthetic", "size": 48, "num_classes": 4},
    "aug": {"name": "none", "simple_crop": True},
    "logger": {"name": "none"},
    "loader": {"batch_size": 8, "workers": 0},
    "optim": {"lr": 2e-3},
    # Stepped per epoch, a warm-up of 0.5 gives the lrs one of 1 epoch did (epoch 0 at warmup_lr, then
    # the cosine), and is shorter than the 1-epoch runs some tests make (a warm-up as long as training is refused).
    "sched": {"warmup_epochs": 0.5},
    # every epoch's end checkpoints (interrupt_at stops at one), whatever the seconds it took
    "train": {"epochs": 2, "log_every_steps": 2, "progress": False, "checkpoint_every_s": 0},
}


@pytest.fixture
def experiment(tmp_path: Path) -> Callable[..., Path]:
    """Write an experiment file (TINY deep-merged with ``changes``) into tmp_path; returns its path."""

    def write(name: str = "tiny", **changes: dict) -> Path:
        config = {"name": name, "output_dir": str(tmp_path / "runs"), **{k: dict(v) for k, v in TINY.items()}}
        for section, values in changes.items():
            if isinstance(values, dict) and isinstance(config.get(section), dict):
                config[section] = {**config[section], **values}
            else:
                config[section] = values
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


class Interrupt(Exception):
    """What :func:`interrupt_at` raises: the run stops as a preempted job would, checkpoint written."""


def interrupt_at(epoch: int, epoch_step: int = 0) -> Callable[[Any], None]:
    """An ``on_loop`` hook that stops training right after the checkpoint of ``(epoch, epoch_step)``
    (``epoch_step`` 0: the end-of-epoch checkpoint of epoch ``epoch``)."""

    def hook(loop: Any) -> None:
        save = loop.run_dir.save

        def save_then_stop(state: Any, best: bool = False) -> None:
            save(state, best=best)
            if state.epoch == epoch and state.epoch_step == epoch_step:
                raise Interrupt

        loop.run_dir.save = save_then_stop

    return hook
