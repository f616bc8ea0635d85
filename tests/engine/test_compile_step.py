"""The compiled step (issue 26): timm's Mixup split into host draws and a tensor apply that equals
timm's call; the region ``train.compile`` compiles (mixing, student forward, loss with the teacher's
forward) has no graph break; compiled steps train as eager ones, CUDA graphs included (``cuda``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from timm.data import Mixup

from research.config import load_run
from research.data.mix import CUT, SplitMixup
from research.engine.fit import forward_and_loss, train_step
from research.launch.train import assemble
from research.registry import MODELS

MIX = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5, "label_smoothing": 0.1, "num_classes": 10}


def test_split_mixup_mixes_as_timms_call_with_the_same_draws() -> None:
    mix, timm_mix = SplitMixup(**MIX), Mixup(**MIX)
    images, targets = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    kinds = set()
    for seed in range(12):
        np.random.seed(seed)
        drawn = mix.draw(images.shape, images.device)
        assert drawn is not None
        mixed, soft = mix.apply(images, targets, drawn)
        np.random.seed(seed)
        expected, expected_soft = timm_mix(images.clone(), targets)
        assert torch.equal(mixed, expected), seed  # the same draws, the same pixels
        torch.testing.assert_close(soft, expected_soft)
        kinds.add(bool(drawn[CUT]))
    assert kinds == {True, False}  # both CutMix and mixup batches were compared
    unmixed = SplitMixup(**{**MIX, "prob": 0.0})
    assert torch.equal(unmixed.apply(images, targets, unmixed.draw(images.shape, images.device))[0], images)  # no mixing: untouched


def _distilled_experiment(experiment, tmp_path: Path, *, drop_path_rate: float = 0.1, **train_options: Any) -> Path:
    checkpoint = tmp_path / "teacher.pt"
    torch.save(MODELS.build("resnet10_cifar", num_classes=4).state_dict(), checkpoint)
    return experiment(
        model={"name": "deit_nano_distilled_patch4_32", "img_size": 32, "drop_path_rate": drop_path_rate},
        teacher={"name": "resnet10_cifar", "checkpoint": str(checkpoint)},
        loss={"name": "hard"},
        aug={"name": "none", "simple_crop": True, "mixup": 0.8, "cutmix": 1.0},
        train={"epochs": 1, "progress": False, "precision": "bf16", **train_options},
    )


def _loop(path: Path) -> Any:
    return assemble(load_run(path)).loop


def test_the_compiled_region_has_no_graph_break(experiment, tmp_path: Path) -> None:
    loop = _loop(_distilled_experiment(experiment, tmp_path))
    images, targets = next(iter(loop.data.train_batches(0, 0)))
    drawn = loop.data.mix.draw(images.shape, images.device)
    explained = torch._dynamo.explain(forward_and_loss)(loop, images, targets, drawn)
    assert explained.graph_break_count == 0, [str(reason) for reason in explained.break_reasons]
    assert explained.graph_count == 1  # mixing, student forward, teacher forward and loss: one graph


def _losses(loop: Any, steps: int) -> list[torch.Tensor]:
    batches = list(loop.data.train_batches(0, 0))[:steps]
    return [train_step(loop, images, targets).float().cpu() for images, targets in batches]


# Compiled code draws stochastic depth from inductor's generator (seeded by the step's seeding, but
# another stream than eager's): the comparisons below run without it.
@pytest.mark.slow
def test_compiled_steps_train_as_eager_steps(experiment, tmp_path: Path) -> None:
    eager = _losses(_loop(_distilled_experiment(experiment, tmp_path, drop_path_rate=0.0)), 3)
    compiled_loop = _loop(_distilled_experiment(experiment, tmp_path, drop_path_rate=0.0, compile=True))
    assert compiled_loop.forward_loss is not forward_and_loss  # the region is compiled
    compiled = _losses(compiled_loop, 3)
    torch.testing.assert_close(torch.stack(compiled), torch.stack(eager), atol=0.05, rtol=0.02)  # bf16, fused kernels


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_graphs_capture_and_replay_the_step(experiment, tmp_path: Path) -> None:
    """``train.compile_mode=reduce-overhead``: the region runs as CUDA graphs; six steps (capture,
    then replays) give finite losses equal to the eager steps' within bf16 tolerance."""
    eager = _losses(_loop(_distilled_experiment(experiment, tmp_path, drop_path_rate=0.0)), 6)
    options = {"compile": True, "compile_mode": "reduce-overhead"}
    graphed_loop = _loop(_distilled_experiment(experiment, tmp_path, drop_path_rate=0.0, **options))
    assert graphed_loop.device.type == "cuda"
    graphed = _losses(graphed_loop, 6)
    assert all(torch.isfinite(loss) for loss in graphed)
    torch.testing.assert_close(torch.stack(graphed), torch.stack(eager), atol=0.05, rtol=0.02)


def _augmented_experiment(experiment, tmp_path: Path, **train_options: Any) -> Path:
    """The GPU student's recipe at toy size: the batched DeiT recipe (RandAugment, random erasing,
    mixup and CutMix) on in-memory batches, hard distillation from a CNN teacher, bf16."""
    checkpoint = tmp_path / "teacher.pt"
    torch.save(MODELS.build("resnet10_cifar", num_classes=4).state_dict(), checkpoint)
    return experiment(
        model={"name": "deit_nano_distilled_patch4_32", "img_size": 32, "drop_path_rate": 0.0},
        teacher={"name": "resnet10_cifar", "checkpoint": str(checkpoint)},
        loss={"name": "hard"},
        aug={
            "name": "none", "simple_crop": True, "rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25,
            "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0,
        },  # fmt: skip
        loader={"batch_augment": True, "batch_size": 8, "workers": 0},
        train={"epochs": 1, "progress": False, "precision": "bf16", **train_options},
    )


def test_with_batch_augment_the_compiled_region_holds_the_augmentation_with_no_graph_break(experiment, tmp_path: Path) -> None:
    loop = _loop(_augmented_experiment(experiment, tmp_path, compile=True))
    pixels, targets, draws = next(iter(loop.data.train_batches(0, 0)))
    assert pixels.dtype == torch.uint8 and pixels.shape[-1] == 3  # the step gets the pixels, not the images
    size = loop.data.augment_size
    mixing = loop.data.mix.draw((len(pixels), 3, size, size), pixels.device)
    explained = torch._dynamo.explain(forward_and_loss)(loop, pixels, targets, mixing, draws)
    assert explained.graph_break_count == 0, [str(reason) for reason in explained.break_reasons]
    assert explained.graph_count == 1  # augmentation, mixing, student forward, teacher forward and loss


@pytest.mark.slow
def test_the_augmentation_in_the_step_gives_the_losses_of_the_augmentation_in_the_batches(experiment, tmp_path: Path) -> None:
    """The same run, its recipe applied by the batches (eager) or inside the step (compiled): the
    augmentation is a pure function of (pixels, draws), so the steps see the same images."""
    eager = _loop(_augmented_experiment(experiment, tmp_path))
    assert eager.data.augment is None
    compiled = _loop(_augmented_experiment(experiment, tmp_path, compile=True))
    assert compiled.data.augment is not None
    eager_losses = [train_step(eager, images, targets).float().cpu() for images, targets in list(eager.data.train_batches(0, 0))[:2]]
    compiled_losses = [
        train_step(compiled, pixels, targets, None, draws).float().cpu()
        for pixels, targets, draws in list(compiled.data.train_batches(0, 0))[:2]
    ]
    torch.testing.assert_close(torch.stack(compiled_losses), torch.stack(eager_losses), atol=0.05, rtol=0.02)
