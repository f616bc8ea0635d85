"""Teachers: loading real (briefly trained) checkpoints, staying frozen, and failing clearly."""

from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import timm
import torch
from torch import nn

from research.losses import build_base_criterion
from research.registry import LOSSES, MODELS, TEACHERS
from research.teachers import (
    Teacher,
    TeacherCheckpointError,
    check_teacher_checkpoint,
    read_state_dict,
)

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A resnet10_cifar trained for a few steps, saved the way the engine saves ``last.pt``."""
    torch.manual_seed(0)
    net = MODELS.build("resnet10_cifar", num_classes=NUM_CLASSES)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8)
    for _ in range(3):  # train mode: BatchNorm running statistics move away from their init
        loss = nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval().requires_grad_(False)
    state = net.state_dict()
    ema = {k: torch.zeros_like(v) for k, v in state.items()}  # differs from "model", which must win
    path = tmp_path_factory.mktemp("teacher") / "last.pt"
    torch.save(
        {
            "model": state,
            "ema": ema,
            "optimizer": optimizer.state_dict(),
            "epoch": 3,
            "rng": {"numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            "config": {"model": {"name": "resnet10_cifar"}, "optim": {"lr": 0.05}},
        },
        path,
    )
    return net, path


def build_teacher(path: Path | str, name: str = "resnet10_cifar", **kwargs: object) -> Teacher:
    return TEACHERS.build(name, num_classes=kwargs.pop("num_classes", NUM_CLASSES), checkpoint=str(path), **kwargs)


def test_engine_checkpoint_loads_as_a_frozen_teacher(trained: tuple[nn.Module, Path]) -> None:
    net, path = trained
    teacher = build_teacher(path)
    assert isinstance(teacher, Teacher) and teacher.num_classes == NUM_CLASSES
    assert not any(p.requires_grad for p in teacher.parameters())
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = net(images)
    torch.testing.assert_close(teacher(images), expected, rtol=0, atol=0)


def test_train_cannot_leave_eval_mode(trained: tuple[nn.Module, Path]) -> None:
    teacher = build_teacher(trained[1])
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    holder = nn.ModuleDict({"teacher": teacher}).train()  # e.g. objective.train() in the engine
    assert not any(m.training for m in holder["teacher"].modules())


def test_outputs_are_ordinary_tensors_without_history(trained: tuple[nn.Module, Path]) -> None:
    logits = build_teacher(trained[1])(torch.randn(2, 3, 32, 32))
    assert not logits.is_inference() and not logits.requires_grad
    # An inference tensor would fail here ("cannot be saved for backward"), whatever the objective.
    student_logits = torch.randn(2, NUM_CLASSES, requires_grad=True)
    nn.functional.mse_loss(student_logits, logits).backward()
    assert student_logits.grad is not None


@pytest.mark.parametrize("layout", ["plain", "ddp_prefix", "deit_args"])
def test_accepted_checkpoint_layouts(trained: tuple[nn.Module, Path], tmp_path: Path, layout: str) -> None:
    net, _ = trained
    state = net.state_dict()
    payload = {
        "plain": state,
        "ddp_prefix": {f"module.{k}": v for k, v in state.items()},
        "deit_args": {"model": state, "args": argparse.Namespace(lr=5e-4, model="deit_tiny")},
    }[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(payload, path)
    assert read_state_dict(str(path)).keys() == state.keys()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(build_teacher(path)(images), net(images), rtol=0, atol=0)


def test_channels_last(trained: tuple[nn.Module, Path]) -> None:
    net, path = trained
    teacher = build_teacher(path, channels_last=True)
    assert teacher.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), net(images))


class TwoHeadStudent(nn.Module):
    """Stands in for a distilled DeiT: returns (class_logits, dist_logits) in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head, self.head_dist = nn.Linear(8, NUM_CLASSES), nn.Linear(8, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images)  # (B, 8)
        return self.head(features), self.head_dist(features)


@pytest.mark.parametrize("loss", ["soft", "soft_paper", "hard"])
def test_student_loss_backward_through_teacher(trained: tuple[nn.Module, Path], loss: str) -> None:
    teacher = build_teacher(trained[1])
    objective = LOSSES.build(
        loss, base_criterion=build_base_criterion(mixup_active=True, label_smoothing=0.1), teacher=teacher
    ).train()
    student = TwoHeadStudent()
    images = torch.randn(4, 3, 32, 32)
    targets = nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), NUM_CLASSES).float() * 0.6 + 0.04  # soft targets

    out = objective(images, student(images), targets)
    out.loss.backward()

    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training  # objective.train() did not unfreeze it


def test_teacher_follows_the_objective_to(trained: tuple[nn.Module, Path]) -> None:
    objective = LOSSES.build("hard", base_criterion=nn.CrossEntropyLoss(), teacher=build_teacher(trained[1]))
    objective.to(torch.float64)  # stands in for .to(device) on a machine with a GPU
    assert objective.teacher.net.conv1.weight.dtype == torch.float64
    assert objective.teacher(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_generic_timm_teacher(tmp_path: Path) -> None:
    net = timm.create_model("resnet10t", pretrained=False, num_classes=NUM_CLASSES).eval()
    path = tmp_path / "resnet10t.pth"
    torch.save({"model": net.state_dict()}, path)
    teacher = build_teacher(path, "timm", arch="resnet10t")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), net(images), rtol=0, atol=0)


def test_unknown_timm_arch_suggests_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown timm architecture.*Did you mean 'resnet10t'"):
        build_teacher(tmp_path / "unused.pth", "timm", arch="resnet10tt")


def test_registry_entries() -> None:
    expected = {"regnety_160", "regnety_080", "regnety_040", "resnet50", "resnet18_cifar", "resnet10_cifar", "airbench_cifar", "timm"}
    assert expected <= set(TEACHERS.names())
    for name in expected:
        params = TEACHERS.signature(name).parameters
        assert {"num_classes", "checkpoint", "channels_last"} <= params.keys()
        assert params["channels_last"].default is False
        arch = TEACHERS.info(name).arch
        if TEACHERS.info(name).source == "timm" and arch is not None:
            assert timm.is_model(arch)
        if TEACHERS.info(name).source == "research":
            assert arch in MODELS
    assert "arch" in TEACHERS.signature("timm").parameters


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(TeacherCheckpointError, match=f"{missing}: no such file"):
        check_teacher_checkpoint(str(missing))
    # The big ImageNet teachers check the file before building their network.
    with pytest.raises(TeacherCheckpointError, match="no such file"):
        build_teacher(missing, "regnety_160", num_classes=1000)


def test_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TeacherCheckpointError, match="is a directory"):
        check_teacher_checkpoint(str(tmp_path))


def test_existing_file_passes_the_cheap_check(trained: tuple[nn.Module, Path]) -> None:
    assert check_teacher_checkpoint(str(trained[1])) == trained[1]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"definitely not a checkpoint", "not a readable PyTorch checkpoint"),
        ({"epoch": 3, "note": "no weights"}, "not a state dict, 2 non-tensor keys"),
        ([torch.zeros(1)], "holds a list"),
        ({"model": {"w": torch.zeros(1)}, "root": PurePosixPath("/data")}, "refuses to unpickle pathlib.*PurePosixPath"),
    ],
    ids=["garbage", "no_tensors", "list", "foreign_object"],
)
def test_unreadable_checkpoints(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(TeacherCheckpointError, match=match) as info:
        build_teacher(path)
    assert str(path) in str(info.value)


def test_other_architecture_lists_keys_and_names_the_teacher(trained: tuple[nn.Module, Path]) -> None:
    with pytest.raises(TeacherCheckpointError, match="does not fit teacher 'resnet18_cifar'") as info:
        build_teacher(trained[1], "resnet18_cifar")
    message = str(info.value)
    assert "missing keys (layer1.1." in message and str(trained[1]) in message


def test_same_keys_other_shapes_are_reported(tmp_path: Path) -> None:
    """An ImageNet-stem resnet18 checkpoint given to the CIFAR one: same keys, a 7x7 instead of 3x3 conv1."""
    path = tmp_path / "resnet18_imagenet_stem.pth"
    torch.save(timm.create_model("resnet18", num_classes=NUM_CLASSES).state_dict(), path)
    shapes = r"conv1.weight: \(64, 3, 7, 7\) vs \(64, 3, 3, 3\)"
    with pytest.raises(TeacherCheckpointError, match=rf"teacher 'resnet18_cifar'.*{shapes}"):
        build_teacher(path, "resnet18_cifar")


def test_wrong_class_count(trained: tuple[nn.Module, Path]) -> None:
    with pytest.raises(TeacherCheckpointError, match="checkpoint has a 10-class head, the dataset has 100 classes"):
        build_teacher(trained[1], num_classes=100)
    assert issubclass(TeacherCheckpointError, ValueError)
