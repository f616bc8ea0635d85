"""Paired variants (issue 25): every variant of an ablation starts from the same student weights and
sees the same images in the same order, whatever teacher, loss or augmentation it adds; and the
switches that restore the reference's seeding (train.reference_init, loader.sampler_seed_epoch_only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from research.config import load_run
from research.data.batch_augment import InMemoryBatches
from research.launch.train import train
from research.registry import MODELS

DISTILLED = {"name": "deit_nano_distilled_patch4_32", "img_size": 32}


class Captured(Exception):
    """Raised by the hook once it has read the run at step 0: nothing trains."""


def _start(experiment, name: str, **changes: Any) -> dict[str, Any]:
    """The student's state dict at step 0 and the item indices of the first two batches of epoch 0."""
    seen: dict[str, Any] = {}

    def hook(loop) -> None:
        seen["weights"] = {k: v.clone() for k, v in loop.state.model.state_dict().items()}
        batches = loop.data.train_batches(0, 0)
        if isinstance(batches, InMemoryBatches):
            seen["indices"] = list(batches.indices[: 2 * loop.data.batch_size])
        else:
            seen["indices"] = [index for index, _ in list(batches.sampler)[: 2 * loop.data.batch_size]]
        raise Captured

    with pytest.raises(Captured):
        train(load_run(experiment(name, **changes)), on_loop=hook)
    return seen


def _teacher(tmp_path: Path) -> str:
    net = MODELS.build("resnet10_cifar", num_classes=4)
    path = tmp_path / "teacher.pt"
    torch.save({"model": net.state_dict()}, path)
    return str(path)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    same_weights = a["weights"].keys() == b["weights"].keys() and all(
        torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"]
    )
    return same_weights and a["indices"] == b["indices"]


@pytest.mark.parametrize("batched", [False, True], ids=["per_image", "batch_augment"])
def test_a_teacher_changes_neither_the_students_init_nor_the_data_order(experiment, tmp_path, batched) -> None:
    teacher = {"name": "resnet10_cifar", "checkpoint": _teacher(tmp_path), "img_size": 32}
    loader = {"batch_size": 8, "workers": 0, "batch_augment": batched}
    none = _start(experiment, "none", model=DISTILLED, loader=loader, loss={"name": "none"}, teacher=teacher)
    hard = _start(experiment, "hard", model=DISTILLED, loader=loader, loss={"name": "hard"}, teacher=teacher)
    assert _same(none, hard)
    assert len(none["indices"]) == 16


@pytest.mark.parametrize("batched", [False, True], ids=["per_image", "batch_augment"])
def test_mixup_changes_neither_the_students_init_nor_the_data_order(experiment, batched) -> None:
    loader = {"batch_size": 8, "workers": 0, "batch_augment": batched}
    plain = _start(experiment, "plain", loader=loader, aug={"name": "none", "simple_crop": True, "mixup": 0.0})
    mixed = _start(experiment, "mixed", loader=loader, aug={"name": "none", "simple_crop": True, "mixup": 0.8})
    assert _same(plain, mixed)
    other_seed = _start(experiment, "seed1", loader=loader, seed=1)
    assert not _same(plain, other_seed)  # the streams do follow the seed


def test_reference_init_builds_the_student_on_the_seed_plus_rank_generator(experiment, tmp_path) -> None:
    """train.reference_init: DeiT's main.py order: torch.manual_seed(seed + rank), data, then the student."""
    teacher = {"name": "resnet10_cifar", "checkpoint": _teacher(tmp_path), "img_size": 32}
    ours = _start(experiment, "ours", model=DISTILLED, loss={"name": "hard"}, teacher=teacher)
    reference = _start(experiment, "ref", model=DISTILLED, loss={"name": "hard"}, teacher=teacher, train={"reference_init": True})
    torch.manual_seed(0)  # seed 0, rank 0; the synthetic data draws nothing from the global generator
    expected = MODELS.build("deit_nano_distilled_patch4_32", num_classes=4, img_size=32).state_dict()
    assert all(torch.equal(reference["weights"][k], expected[k]) for k in expected)
    assert not torch.equal(ours["weights"]["cls_token"], reference["weights"]["cls_token"])
    assert ours["indices"] == reference["indices"]  # the data order is not this switch's


def test_sampler_seed_epoch_only_makes_the_order_ignore_the_seed(experiment) -> None:
    loader = {"batch_size": 8, "workers": 0, "sampler_seed_epoch_only": True}
    assert _start(experiment, "a", loader=loader, seed=0)["indices"] == _start(experiment, "b", loader=loader, seed=5)["indices"]
    assert _start(experiment, "c", seed=0)["indices"] != _start(experiment, "d", seed=5)["indices"]
