"""Per-step overhead switches: the optimizer's kernel, torch.compile, the teacher as the run, the eval batch."""

from __future__ import annotations

import pytest
import torch

from research.config import ConfigError, load_run
from research.launch.dist import DistEnv
from research.launch.run_data import build_data
from research.launch.train import build_model, build_state, optimizer_implementation, train
from research.registry import MODELS
from research.teachers import Teacher


@pytest.mark.parametrize(
    ("implementation", "expected"),
    [("auto", {"foreach": None, "fused": None}), ("foreach", {"foreach": True, "fused": None}),
     ("for_loop", {"foreach": False, "fused": None}), ("fused", {"foreach": None, "fused": True})],
)  # fmt: skip
def test_optimizer_implementation_reaches_torchs_adamw(experiment, implementation: str, expected: dict) -> None:
    run = load_run(experiment(optim={"name": "adamw", "implementation": implementation}))
    data = build_data(run.cfg, DistEnv())
    model = build_model(run.cfg, data.num_classes, DistEnv())
    optimizer = build_state(run.cfg, model, data, DistEnv()).optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {key: optimizer.defaults[key] for key in expected} == expected
    images = torch.randn(4, 3, 32, 32)
    model(images).sum().backward()
    optimizer.step()  # the fused kernel runs on the CPU too


@pytest.mark.parametrize(
    ("name", "device", "expected"),
    [("adamw", "cuda", {"fused": True}), ("sgd", "cuda", {"fused": True}), ("lamb", "cuda", {}), ("adamw", "cpu", {})],
)
def test_auto_picks_the_fused_kernel_on_cuda_where_the_optimizer_has_one(name: str, device: str, expected: dict) -> None:
    assert optimizer_implementation("auto", name, torch.device(device)) == expected
    assert optimizer_implementation("foreach", name, torch.device(device)) == {"foreach": True}


def test_optimizer_implementation_is_checked_when_the_config_loads(experiment) -> None:
    with pytest.raises(ConfigError, match=r"optim.implementation='fused': optimizer 'lamb' \(Lamb\) has no fused implementation"):
        load_run(experiment(optim={"name": "lamb", "implementation": "fused"}))
    with pytest.raises(ConfigError, match="optim.implementation 'fast' is not one of auto, foreach, fused, for_loop"):
        load_run(experiment(optim={"implementation": "fast"}))
    with pytest.raises(ConfigError, match="train.compile_mode 'fastest' is not one of default, reduce-overhead"):
        load_run(experiment(train={"compile_mode": "fastest"}))


def test_teacher_runs_in_the_runs_dtype_and_layout_and_gives_float_targets() -> None:
    torch.manual_seed(0)
    net = MODELS.build("resnet10_cifar", num_classes=10)
    images = torch.randn(16, 3, 32, 32)
    reference = Teacher(net, name="resnet10_cifar", num_classes=10)(images)
    teacher = Teacher(MODELS.build("resnet10_cifar", num_classes=10), name="resnet10_cifar", num_classes=10)
    teacher.load_state_dict(Teacher(net, name="r", num_classes=10).state_dict())
    teacher.for_run(channels_last=True, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters()) and teacher.channels_last
    stem = next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.weight.is_contiguous(memory_format=torch.channels_last)
    logits = teacher(images)
    assert logits.dtype == torch.float32 and not logits.is_inference()  # a target a loss can save for backward
    torch.testing.assert_close(logits, reference, atol=0.15, rtol=0.05)  # bf16 rounding
    assert (logits.argmax(1) == reference.argmax(1)).float().mean() >= 0.9  # hard distillation's labels


def test_eval_batch_defaults_to_four_training_batches(experiment) -> None:
    run = load_run(experiment(loader={"batch_size": 4}))
    assert build_data(run.cfg, DistEnv()).loop_data.val_loader.batch_size == 16
    run = load_run(experiment(loader={"batch_size": 4, "eval_batch_size": 6}))
    assert build_data(run.cfg, DistEnv()).loop_data.val_loader.batch_size == 6


@pytest.mark.slow
def test_a_compiled_student_trains_and_evaluates_on_the_cpu(experiment) -> None:
    run = load_run(experiment(train={"epochs": 1, "compile": True, "precision": "bf16", "progress": False}))
    summary = train(run)
    assert summary["status"] == "done" and summary["last_top1"] is not None


@pytest.mark.parametrize(("teacher_fp32", "dtype"), [(False, torch.bfloat16), (True, torch.float32)])
def test_teacher_fp32_keeps_the_teachers_weights_in_fp32(experiment, tmp_path, teacher_fp32, dtype) -> None:
    """train.teacher_fp32: the reference's fp32 teacher under autocast; by default its weights (BatchNorm too) are cast."""
    from research.launch.train import build_teacher

    path = tmp_path / "teacher.pt"
    torch.save({"model": MODELS.build("resnet10_cifar", num_classes=4).state_dict()}, path)
    run = load_run(
        experiment(
            model={"name": "deit_nano_distilled_patch4_32", "img_size": 32},
            loss={"name": "hard"},
            teacher={"name": "resnet10_cifar", "checkpoint": str(path), "img_size": 32},
            train={"precision": "bf16", "teacher_fp32": teacher_fp32, "progress": False},
        )
    )
    teacher = build_teacher(run.cfg, 4, DistEnv())
    norms = [m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {p.dtype for p in teacher.parameters()} == {dtype} and norms[0].running_var.dtype == dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert teacher(torch.randn(2, 3, 32, 32)).dtype == torch.float32
