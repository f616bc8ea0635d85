"""bench/launches.py: the counting rule, the phases of a real step, and augmentation launches that do
not grow with the batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launches import PHASES, LaunchCounter

from research.data.batch_augment import InMemoryBatches
from research.data.batch_ops import whole_batches
from research.registry import AUGMENTATIONS

ROOT = Path(__file__).resolve().parents[2]
GPU_RECIPE_AUG = {"rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25, "mixup": 0.0, "cutmix": 0.0, "simple_crop": True}


def test_views_and_allocations_are_not_launches() -> None:
    x = torch.arange(12.0)
    counter = LaunchCounter()
    with counter:
        y = x.view(3, 4).t().expand(2, 4, 3)[0, 1:]  # views: none
        torch.empty(5)  # an allocation: none
        z = torch.where(y > 2, y, 0.0) + 1  # gt, where (the 0.0 is a host scalar), add: three
    assert counter.counts["other"] == 3 and sum(counter.ops["other"].values()) == 3
    assert z.shape == (3, 3)


def _augmentation_launches(batch: int) -> int:
    transform = AUGMENTATIONS.build("cifar", img_size=32, **GPU_RECIPE_AUG).batch_transform
    pixels = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8)
    params = transform.sample(batch, 32, 32, torch.Generator().manual_seed(0))
    counter = LaunchCounter()
    with whole_batches():  # as on a device: every op on the whole batch
        transform.apply(pixels, params, torch.Generator().manual_seed(1))  # the op tables and constants, made once
        with counter:
            transform.apply(pixels, params, torch.Generator().manual_seed(2))
    return counter.counts["other"]


def test_augmentation_launches_do_not_grow_with_the_batch() -> None:
    small, large = _augmentation_launches(4), _augmentation_launches(64)
    assert small == large
    assert 50 < large < 2428 // 4  # RandAugment applies what each image drew, not every op (issue 26: 2,428)


def _epoch_launches(batch: int, images: int) -> tuple[int, int]:
    """Launches of one batch of an in-memory epoch (its slice of the epoch's draws, its noise, its
    transform: what a training step runs), and of the epoch's draws, made once when the epoch starts."""
    transform = AUGMENTATIONS.build("cifar", img_size=32, **GPU_RECIPE_AUG).batch_transform
    pixels = torch.randint(0, 256, (images, 32, 32, 3), dtype=torch.uint8)

    def epoch() -> InMemoryBatches:
        order = list(range(images))
        return InMemoryBatches(pixels, order, order, batch, transform, train=True, generator=torch.Generator().manual_seed(0))

    step, drawing = LaunchCounter(), LaunchCounter()
    with whole_batches():  # as on a device: every op on the whole batch
        next(iter(epoch()))  # the op tables and constants, made once
        with drawing:
            batches = iter(epoch())
        with step:
            next(batches)
    return step.counts["other"], drawing.counts["other"]


def test_a_step_augments_in_at_most_150_launches_whatever_the_batch_and_epoch() -> None:
    """Issue 26's goal for the GPU student recipe's augmentation (a count, not a timing: it is exact)."""
    step, epoch = _epoch_launches(4, 8)
    assert 0 < step <= 150  # 2,428 in issue 26, 311 with the draws per batch
    assert (step, epoch) == _epoch_launches(16, 48)  # neither grows with the batch or the epoch
    assert 0 < epoch <= 70  # the ops' parameters of every image of the epoch, at once


@pytest.mark.slow
def test_the_script_counts_every_phase_of_the_gpu_student_step(tmp_path: Path) -> None:
    out = tmp_path / "launches.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "launches.py"), "--batch", "4", "8", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| batch | augmentation |" in done.stdout
    record = json.loads(out.read_text())
    small, large = record["rows"]
    assert (small["batch"], large["batch"]) == (4, 8)
    for phase in PHASES:  # the recipe has all of them: batched augmentation, mixup, a teacher, an optimizer
        assert small[phase] > 0, phase
    assert small["augmentation"] == large["augmentation"]
    assert small["total"] == sum(small[phase] for phase in PHASES)
    assert small["augmentation"] <= 150 and small["total"] <= 1000  # issue 26's goals
    assert small["epoch_draws"] == large["epoch_draws"] > 0
