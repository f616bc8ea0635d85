"""A run whose train.epochs grows trains on at the lr a fresh run of the new length has (README)."""

from __future__ import annotations

import pytest
import yaml

from research.config import load_run
from research.engine.run_dir import read_lives, read_metrics
from research.launch.train import train


def _lrs(run_dir) -> list[float]:
    """The lr applied in each epoch, from the epoch records (train/lr: the lr the epoch trained at)."""
    return [m["train/lr"] for m in read_metrics(run_dir) if "epoch_time_s" in m]


def test_grown_run_trains_on_with_the_new_length_schedule(experiment) -> None:
    sched, small = {"warmup_epochs": 1, "min_lr": 1e-5}, {"optim": {"lr": 2e-3, "scale_lr": False}, "data": {"size": 16}}
    fresh = load_run(experiment("fresh", train={"epochs": 6, "progress": False}, sched=sched, **small))
    train(fresh)
    grown_path = experiment("grown", train={"epochs": 2, "progress": False}, sched=sched, **small)
    train(load_run(grown_path))
    short = _lrs(load_run(grown_path).run_dir)
    grown = load_run(experiment("grown", train={"epochs": 6, "progress": False}, sched=sched, **small))
    train(grown)

    applied, reference = _lrs(grown.run_dir), _lrs(fresh.run_dir)
    assert len(applied) == 6
    assert applied[:2] == pytest.approx(short)  # the first life's epochs as they ran
    assert applied[2:] == pytest.approx(reference[2:], rel=1e-9)  # then the fresh 6-epoch run's lr, epoch by epoch
    assert min(applied[2:]) > 10 * sched["min_lr"]  # not the old schedule's floor

    lives = read_lives(grown.run_dir)
    assert [life["schedule"] for life in lives] == [{"from_epoch": 0, "epochs": 2}, {"from_epoch": 2, "epochs": 6}]
    assert lives[1]["epochs_extended"] == [2, 6]
    saved = yaml.safe_load((grown.run_dir / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 6 and saved["schedules"] == [life["schedule"] for life in lives]


def test_a_plain_resume_records_one_schedule(experiment) -> None:
    run = load_run(experiment("plain", train={"epochs": 1, "progress": False}))
    train(run)
    assert "schedules" not in yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert read_lives(run.run_dir)[0]["schedule"] == {"from_epoch": 0, "epochs": 1}
