"""``loader.batch_augment``: a run whose crops and flips are drawn per batch, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from research import seeding
from research.config import ConfigError, load_run
from research.config.components import SECTIONS, build_component
from research.data.batch_augment import InMemoryBatches
from research.engine import checkpoint
from research.engine.run_dir import read_metrics
from research.launch.dist import DistEnv
from research.launch.run_data import build_data
from research.launch.train import train

from .conftest import Interrupt, interrupt_at

BATCHED = {"batch_augment": True, "batch_size": 8, "workers": 0}


def test_batched_run_learns_and_a_mid_epoch_resume_repeats_its_draws(experiment) -> None:
    options = {"epochs": 2, "checkpoint_every_steps": 2, "log_every_steps": 2, "progress": False}
    straight = load_run(experiment("straight", loader=BATCHED, train=options))
    summary = train(straight)
    assert summary["status"] == "done"

    resumed = load_run(experiment("resumed", loader=BATCHED, train=options))

    def stop_inside_the_second_epoch(loop) -> None:
        assert isinstance(loop.data.val_loader, InMemoryBatches)  # no DataLoader, no worker
        interrupt_at(1, 2)(loop)

    with pytest.raises(Interrupt):
        train(resumed, on_loop=stop_inside_the_second_epoch)
    assert checkpoint.load(resumed.run_dir / "last.pt")["epoch_step"] == 2
    train(resumed)

    a, b = read_metrics(straight.run_dir)[-1], read_metrics(resumed.run_dir)[-1]
    # The resumed half-epoch saw the same crops and flips, so it ends at the same weights; the
    # checkpoint kept the epoch's loss sums, so its record counts the steps before the resume too.
    for key in ("val/loss", "val/top1", "train/epoch_loss"):
        assert a[key] == b[key], key


def test_batched_run_on_synthetic_data_beats_chance(experiment) -> None:
    run = load_run(
        experiment(
            model={"name": "resnet10_cifar"},
            data={"name": "synthetic", "size": 160, "num_classes": 4},
            loader={**BATCHED, "batch_size": 16},
            optim={"name": "sgd", "lr": 0.4, "weight_decay": 5e-4},
            train={"epochs": 3, "log_every_steps": 5, "progress": False},
        )
    )
    train(run)
    assert read_metrics(run.run_dir)[-1]["val/top1"] > 50  # 4 classes: chance is 25


def test_limited_splits_map_items_to_rows_of_the_full_array(experiment) -> None:
    run = load_run(experiment(loader={**BATCHED, "batch_size": 4, "limit_train": 20, "limit_val": 6}))
    data = build_data(run.cfg, DistEnv())
    assert data.train_size == 20 and data.val_size == 6
    # The batches must be the subset's rows, as the per-image eval transform reads them.
    val_set = build_component(SECTIONS["data"], run.cfg.data, split="val", transform=data.recipe.eval_transform)
    order = torch.randperm(len(val_set), generator=seeding.generator(run.cfg.seed, "subset", 1)).tolist()  # 1: val
    rows = sorted(order[:6])
    images, targets = zip(*data.loop_data.val_loader)
    torch.testing.assert_close(torch.cat(images), torch.stack([val_set[i][0] for i in rows]), atol=1e-5, rtol=0)
    assert torch.cat(targets).tolist() == [val_set.targets[i] for i in rows]

    epoch = list(data.loop_data.train_batches(0, 0))
    assert sum(len(t) for _, t in epoch) == 20


def test_the_full_deit_recipe_runs_batched_and_repeats_its_draws_on_resume(experiment) -> None:
    """RandAugment, random erasing, mixup/cutmix (recipe cifar) on whole batches, through a mid-epoch resume."""
    aug = {"name": "cifar", "rand_augment": "rand-m9-mstd0.5-inc1", "repeated_aug": 1}
    options = {"epochs": 1, "checkpoint_every_steps": 2, "log_every_steps": 2, "progress": False}
    straight = load_run(experiment("straight", aug=aug, loader=BATCHED, train=options))
    assert straight.cfg.loader.batch_augment and train(straight)["status"] == "done"
    resumed = load_run(experiment("resumed", aug=aug, loader=BATCHED, train=options))
    with pytest.raises(Interrupt):
        train(resumed, on_loop=interrupt_at(0, 2))
    train(resumed)
    a, b = read_metrics(straight.run_dir)[-1], read_metrics(resumed.run_dir)[-1]
    assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-6, abs=1e-6)  # the same draws after the resume


def test_recipe_without_a_batched_version_is_refused_before_anything_runs(experiment) -> None:
    with pytest.raises(ConfigError, match=r"loader.batch_augment .* no batched version of auto_augment .*GaussianBlur"):
        load_run(experiment(aug={"name": "cifar", "rand_augment": None, "auto_augment": "3a"}, loader=BATCHED))
    path = _with_data(experiment(loader=BATCHED), {"name": "cifar10_jpeg", "archive": "never/read.tar.xz", "in_memory": False})
    with pytest.raises(ConfigError, match="set data.in_memory: true"):
        load_run(path)


def test_alternate_flip_without_the_batch_path_is_refused(experiment) -> None:
    aug = {"name": "none", "simple_crop": True, "alternate_flip": True}
    with pytest.raises(ConfigError, match="aug.alternate_flip needs .* set loader.batch_augment: true"):
        load_run(experiment(aug=aug, loader={"batch_augment": False}))
    run = load_run(experiment(aug=aug, loader=BATCHED))  # with it, the same recipe loads
    train_batches = build_data(run.cfg, DistEnv()).loop_data.train_batches
    epochs = [train_batches(epoch, 0) for epoch in (0, 1)]  # the run's own epochs, sampler order included
    flips = [dict(zip(b.indices.tolist(), b.params.flip.tolist())) for b in epochs]
    assert flips[0].keys() == flips[1].keys() and all(flips[0][row] != flips[1][row] for row in flips[0])


def test_dataset_not_in_memory_is_refused_when_built(experiment, tmp_path: Path) -> None:
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    run = load_run(_with_data(experiment(loader=BATCHED), {"name": "imagefolder", "root": str(tmp_path / "images")}))
    with pytest.raises(ConfigError, match="decoded in memory.*ImageFolder"):
        build_data(run.cfg, DistEnv())


def _with_data(path: Path, data: dict) -> Path:
    """The experiment file at ``path`` with its whole ``data:`` section replaced."""
    config = yaml.safe_load(path.read_text())
    config["data"] = data
    path.write_text(yaml.safe_dump(config))
    return path
