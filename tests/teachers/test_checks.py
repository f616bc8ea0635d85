"""A teacher section's load-time checks: its checkpoint, and its resolution against the student's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from research.config import ConfigError, load_run
from research.registry import MODELS

REPO = Path(__file__).resolve().parents[2]
STUDENT = {"name": "deit_nano_distilled_patch4_32", "img_size": 32}


@pytest.fixture
def teacher_file(tmp_path: Path) -> str:
    path = tmp_path / "teacher.pth"
    torch.save(MODELS.build("resnet10_cifar", num_classes=10).state_dict(), path)
    return str(path)


def distilled(experiment, teacher: dict, model: dict = STUDENT) -> Path:
    return experiment(model=model, teacher=teacher, loss={"name": "hard"})


def test_a_teacher_at_the_students_resolution_loads_quietly(experiment, teacher_file, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        run = load_run(distilled(experiment, {"name": "resnet10_cifar", "checkpoint": teacher_file}))
    assert run.cfg.teacher["name"] == "resnet10_cifar" and "sees the student's" not in caplog.text


def test_a_teacher_at_another_resolution_warns(experiment, teacher_file, caplog) -> None:
    student = {**STUDENT, "img_size": 48}
    with caplog.at_level(logging.WARNING):
        load_run(distilled(experiment, {"name": "resnet10_cifar", "checkpoint": teacher_file}, student))
    assert "trained at 32x32) sees the student's 48x48 images" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a checkpoint adapted to 48, said so: quiet
        run = load_run(distilled(experiment, {"name": "resnet10_cifar", "checkpoint": teacher_file, "img_size": 48}, student))
    assert "sees the student's" not in caplog.text and run.cfg.teacher["img_size"] == 48


def test_a_teacher_of_unknown_resolution_must_say_it(experiment, teacher_file) -> None:
    with pytest.raises(ConfigError, match=r"teacher\.img_size"):
        load_run(distilled(experiment, {"name": "timm", "arch": "resnet18", "checkpoint": teacher_file}))


def test_a_missing_checkpoint_is_refused_at_load(experiment, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"teacher\.checkpoint: .*no such file"):
        load_run(distilled(experiment, {"name": "resnet10_cifar", "checkpoint": str(tmp_path / "nope.pth")}))


def test_the_384_fine_tune_states_and_warns_its_224_teacher(caplog, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    from research.config import load_runs

    with caplog.at_level(logging.WARNING):
        (run,) = load_runs(REPO / "experiments" / "deit_base_distilled_384_finetune_imagenet.yaml", check_files=False)
    assert run.cfg.teacher["img_size"] == 224
    assert "trained at 224x224) sees the student's 384x384 images" in caplog.text
