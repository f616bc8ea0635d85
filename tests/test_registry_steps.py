"""Every registered model and teacher takes a training step through the engine.

On the CPU, in fp32: a smoke test parametrised over the whole registry (as timm's model tests are), so
a newly registered entry is covered without anyone writing a test for it. On a GPU (marker ``cuda``,
skipped where torch sees none): fp32, bf16, and fp16 with the engine's GradScaler, the CNNs also in
channels-last and the teachers in channels-last as the recipes run them.

A step is the engine's own: the run's parts are built by ``research.launch.train.assemble``, as
``train`` builds them, and :func:`research.engine.fit.train_step` runs on its first batch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from research.config import load_run
from research.config.checks import schema_markers
from research.engine.fit import Loop, train_step
from research.launch.dist import DistEnv
from research.launch.train import assemble
from research.registry import MODELS, TEACHERS
from research.teachers import teacher_network

#: Builder arguments a teacher needs beyond num_classes, checkpoint and channels_last.
TEACHER_ARGS: dict[str, dict[str, Any]] = {"timm": {"arch": "resnet18", "img_size": 32}}
STUDENT = "deit_nano_distilled_patch4_32"  # the smallest distilled student; every teacher is run at 32 px
PRECISIONS = schema_markers()["train.precision"][0].choices


def engine_loop(experiment: dict[str, Any], tmp_path: Path, device: torch.device) -> Loop:
    """The Loop that ``train`` trains ``experiment`` with on ``device`` (:func:`assemble`)."""
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return assemble(load_run(path), DistEnv(device=device)).loop


def _experiment(tmp_path: Path, *, model: str, size: int, precision: str, channels_last: bool = False) -> dict[str, Any]:
    batch = 2 if size > 32 else 8  # BatchNorm needs more than one image; 224/384 px stays cheap
    return {
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": model, "img_size": size},
        "data": {"name": "synthetic", "size": 2 * batch, "img_size": size, "num_classes": 10},
        "aug": {"name": "none", "simple_crop": True},
        "logger": {"name": "none"},
        "loader": {"batch_size": batch, "workers": 0},
        "train": {"epochs": 1, "precision": precision, "progress": False, "channels_last": channels_last},
        "sched": {"warmup_epochs": 0},
    }


def _step(loop: Loop) -> torch.Tensor:
    images, targets = next(iter(loop.data.train_batches(0, 0)))
    return train_step(loop, images, targets)


def _trained_one_step(loop: Loop, before: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
    assert math.isfinite(loss.item()), f"loss {loss.item()}"
    assert loop.state.step == 1
    params = dict(loop.state.model.named_parameters())
    moved = [name for name, value in before.items() if not torch.equal(value, params[name].detach())]
    assert moved, "no parameter changed in the optimizer step"
    for name, value in params.items():
        assert torch.isfinite(value).all(), name


def _size(model: str) -> int:
    return MODELS.info(model).default_img_size or 32


def _is_cnn(model: str) -> bool:
    return MODELS.info(model).family == "cnn"


def _model_cases() -> list[Any]:
    cases = []
    for name in MODELS.names():
        slow = [pytest.mark.slow] if _size(name) > 32 else []
        cases.append(pytest.param(name, "cpu", "fp32", False, marks=slow, id=f"{name}-cpu-fp32"))
        for precision in PRECISIONS:
            for channels_last in (False, True) if _is_cnn(name) else (False,):
                layout = "-channels_last" if channels_last else ""
                case_id = f"{name}-cuda-{precision}{layout}"
                cases.append(pytest.param(name, "cuda", precision, channels_last, marks=pytest.mark.cuda, id=case_id))
    return cases


@pytest.mark.parametrize("name, device, precision, channels_last", _model_cases())
def test_every_model_takes_a_training_step(name: str, device: str, precision: str, channels_last: bool, tmp_path: Path) -> None:
    experiment = _experiment(tmp_path, model=name, size=_size(name), precision=precision, channels_last=channels_last)
    loop = engine_loop(experiment, tmp_path, torch.device(device))
    assert loop.state.scaler.is_enabled() == (precision == "fp16")  # fp16 steps through a GradScaler
    before = {key: value.detach().clone() for key, value in loop.state.model.named_parameters()}
    loss = _step(loop)
    _trained_one_step(loop, before, loss)
    assert next(loop.state.model.parameters()).device.type == device


def _random_teacher_checkpoint(name: str, path: Path) -> str:
    torch.save(teacher_network(name, num_classes=10, arch=TEACHER_ARGS.get(name, {}).get("arch")).state_dict(), path)
    return str(path)


def _teacher_cases() -> list[Any]:
    cases = []
    for name in TEACHERS.names():
        cases.append(pytest.param(name, "cpu", "fp32", id=f"{name}-cpu-fp32"))
        cases += [pytest.param(name, "cuda", p, marks=pytest.mark.cuda, id=f"{name}-cuda-{p}") for p in PRECISIONS]
    return cases


@pytest.mark.parametrize("name, device, precision", _teacher_cases())
def test_every_teacher_distils_a_student_step(name: str, device: str, precision: str, tmp_path: Path) -> None:
    """Hard distillation from each teacher (random weights), channels-last on a GPU as the recipes run it:
    the student takes a step and the teacher stays frozen."""
    experiment = _experiment(tmp_path, model=STUDENT, size=32, precision=precision)
    checkpoint = _random_teacher_checkpoint(name, tmp_path / "teacher.pt")
    experiment["loss"] = {"name": "hard"}
    experiment["teacher"] = {"name": name, "checkpoint": checkpoint, "channels_last": device == "cuda", **TEACHER_ARGS.get(name, {})}
    loop = engine_loop(experiment, tmp_path, torch.device(device))
    teacher = loop.objective.teacher  # type: ignore[attr-defined]
    frozen = {key: value.detach().clone() for key, value in teacher.state_dict().items()}
    before = {key: value.detach().clone() for key, value in loop.state.model.named_parameters()}
    loss = _step(loop)
    _trained_one_step(loop, before, loss)
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, frozen[key]), f"teacher {key} changed"
