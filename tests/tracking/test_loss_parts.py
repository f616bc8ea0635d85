"""The loss's parts (``LossOutput.logs``) reach W&B and ``metrics.jsonl``, per log window and per epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from wandb_reader import read_runs

from research.cli import main
from research.registry import MODELS


def test_base_and_distillation_losses_are_logged_and_read_back(wandb_env: Path, experiment) -> None:
    teacher = wandb_env / "teacher.pth"
    torch.save(MODELS.build("resnet10_cifar", num_classes=4).state_dict(), teacher)
    path = experiment(
        "parts",
        model={"name": "deit_nano_distilled_patch4_32"},
        teacher={"name": "resnet10_cifar", "checkpoint": str(teacher)},
        loss={"name": "hard", "alpha": 0.5},
        data={"num_classes": 4},
        logger={"name": "wandb", "project": "deit-tests"},
        loader={"batch_size": 8},
        train={"epochs": 2, "log_every_steps": 2},
    )  # tests/conftest.py's TINY experiment under tmp_path (wandb_env's folder)
    assert main(["train", str(path)]) == 0
    run_dir = wandb_env / "runs" / "parts"

    (run,) = read_runs(run_dir, count=1)
    window = {key: [value for _, value in run.metric(f"train/{key}")] for key in ("loss", "loss/base", "loss/distill")}
    assert len(window["loss"]) == len(window["loss/base"]) == len(window["loss/distill"]) == 4  # 2 per epoch
    for loss, base, distill in zip(window["loss"], window["loss/base"], window["loss/distill"]):
        assert loss == pytest.approx(0.5 * base + 0.5 * distill, rel=1e-5)  # hard distillation, alpha 0.5
    (_, epoch_distill), _ = run.metric("train/epoch_loss/distill")
    assert epoch_distill > 0

    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [line for line in epochs if "train/epoch_loss" in line]
    assert len(epochs) == 2
    for line in epochs:
        expected = 0.5 * line["train/epoch_loss/base"] + 0.5 * line["train/epoch_loss/distill"]
        assert line["train/epoch_loss"] == pytest.approx(expected, rel=1e-5)
    # the epoch's parts are the means of its windows (2 windows of 2 steps each)
    assert epochs[0]["train/epoch_loss/distill"] == pytest.approx(sum(window["loss/distill"][:2]) / 2, rel=1e-5)
