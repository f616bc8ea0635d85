"""Datasets, recipe and loaders of a run, from its config (the engine sees only :class:`TrainData`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from research import seeding
from research.config import ConfigError, ExperimentCfg
from research.config.components import SECTIONS, build_component
from research.data import InMemoryImageDataset, PlaceSeeded, build_eval_sampler, build_train_sampler, placed
from research.data.batch_augment import InMemoryBatches
from research.engine.fit import TrainData
from research.launch.dist import DistEnv
from research.registry import model_img_size


@dataclass
class RunData:
    loop_data: TrainData
    num_classes: int
    recipe: Any
    train_size: int
    val_size: int


def build_data(cfg: ExperimentCfg, env: DistEnv) -> RunData:
    recipe = build_component(SECTIONS["aug"], cfg.aug, img_size=model_img_size(cfg.model))
    train_set = build_component(SECTIONS["data"], cfg.data, split="train", transform=recipe.train_transform)
    val_set = build_component(SECTIONS["data"], cfg.data, split="val", transform=recipe.eval_transform)
    num_classes = len(train_set.classes)
    train_set = _limit(train_set, cfg.loader.limit_train, seeding.generator(cfg.seed, "subset", 0))
    val_set = _limit(val_set, cfg.loader.limit_val, seeding.generator(cfg.seed, "subset", 1))
    batch = cfg.loader.batch_size
    # The reference samples each image once per epoch on one process (RASampler only when distributed)
    single = env.world_size == 1 and not cfg.loader.repeated_aug_single_process
    sampler = build_train_sampler(
        train_set, repeats=1 if single else recipe.repeats, num_replicas=env.world_size, rank=env.rank, seed=cfg.seed,
        seed_epoch_only=cfg.loader.sampler_seed_epoch_only,
    )  # fmt: skip
    steps = len(sampler) // batch
    if steps == 0:
        raise ConfigError(
            f"loader.batch_size={batch} is larger than the {len(sampler)} training images each of the "
            f"{env.world_size} processes gets; lower loader.batch_size"
        )
    in_memory = _in_memory(train_set, val_set, recipe, cfg, env.device) if cfg.loader.batch_augment else None
    in_step = in_memory is not None and cfg.train.compile
    seeded_train_set = PlaceSeeded(train_set)  # an image's draws follow its place in the epoch, not its worker

    def train_batches(epoch: int, skip_steps: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        sampler.set_epoch(epoch)
        # The epoch's random draws (each image's, or the crops of the batch path) come from streams of
        # (seed, epoch, rank) and the place in the epoch (research/seeding.py): an epoch's augmentations
        # are the same whether the run was resumed before it, or inside it, or not, with any number of workers.
        generator = seeding.generator(cfg.seed, "batch", epoch, env.rank)
        if in_memory is not None:
            pixels, targets, positions = in_memory[0]
            indices = [positions[i] for i in sampler][: steps * batch]
            batches = InMemoryBatches(
                pixels, targets, indices, batch, recipe.batch_transform, train=True, drop_last=True,
                generator=generator, skip_batches=skip_steps, epoch=epoch, flip_seed=cfg.seed,
            )  # fmt: skip
            # Compiled, the step transforms the pixels itself, with the forward (one graph, issue 26).
            return ((p, t, draws) for p, draws, t in batches.drawn()) if in_step else batches
        indices = list(sampler)[skip_steps * batch : steps * batch]
        items = placed(indices, seed=cfg.seed, epoch=epoch, rank=env.rank, start=skip_steps * batch)
        return _loader(seeded_train_set, cfg, batch, env, sampler=items, drop_last=True, generator=generator)

    val_sampler = build_eval_sampler(val_set, num_replicas=env.world_size, rank=env.rank)  # no padding: exact totals
    eval_batch = cfg.loader.eval_batch_size or 4 * batch  # no gradients or saved activations at evaluation
    if in_memory is not None:
        pixels, targets, positions = in_memory[1]
        val_indices = [positions[i] for i in val_sampler]
        val_loader: Iterable = InMemoryBatches(pixels, targets, val_indices, eval_batch, recipe.batch_transform, train=False)
    else:
        val_loader = _loader(val_set, cfg, eval_batch, env, sampler=val_sampler)
    loop_data = TrainData(
        train_batches=train_batches,
        steps_per_epoch=steps,
        val_loader=val_loader,
        mix=recipe.mixup(num_classes=num_classes, label_smoothing=cfg.train.label_smoothing),
        batch_size=batch,
        world_size=env.world_size,
        augment=recipe.batch_transform.transform if in_step else None,
        augment_size=recipe.img_size,
    )
    return RunData(loop_data, num_classes, recipe, len(train_set), len(val_set))


_Arrays = tuple[torch.Tensor, torch.Tensor, list[int]]


def _in_memory(
    train_set: Dataset, val_set: Dataset, recipe: Any, cfg: ExperimentCfg, device: torch.device
) -> tuple[_Arrays, _Arrays]:
    """The decoded pixels and targets of both splits on the training device (copied there once: the
    whole recipe then runs on batches there), and each split's item -> row map, for ``loader.batch_augment``."""
    assert recipe.batch_transform is not None  # the recipe's check (research/data/checks.py) refused the config
    arrays = []
    for split, dataset in (("train", train_set), ("val", val_set)):
        positions = list(range(len(dataset)))  # type: ignore[arg-type]
        if isinstance(dataset, Subset):  # loader.limit_*: items are rows of the full dataset
            positions = list(dataset.indices)
            dataset = dataset.dataset
        if not isinstance(dataset, InMemoryImageDataset):
            raise ConfigError(
                f"loader.batch_augment needs the {split} images decoded in memory, but dataset {cfg.data['name']!r} "
                f"gives {type(dataset).__name__}: set data.in_memory: true, or loader.batch_augment: false"
            )
        height, width = dataset.pixels.shape[1:3]
        size = recipe.img_size
        if split == "val" and (height, width) != (size, size):
            raise ConfigError(
                f"loader.batch_augment evaluates images as they are, but the val images are {width}x{height} and "
                f"model.img_size is {size}: set loader.batch_augment: false (the per-image path resizes them)"
            )
        pixels = torch.from_numpy(dataset.pixels).to(device)  # (N, H, W, 3) uint8; shared, not copied, on the CPU
        arrays.append((pixels, torch.as_tensor(dataset.targets, device=device), positions))
    return arrays[0], arrays[1]


def _limit(dataset: Dataset, limit: int | None, generator: torch.Generator) -> Dataset:
    """A fixed subset of ``limit`` items, drawn from ``generator`` (keeps ``.classes``)."""
    size = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= size:
        return dataset
    order = torch.randperm(size, generator=generator).tolist()
    subset = Subset(dataset, sorted(order[:limit]))
    subset.classes = dataset.classes  # type: ignore[attr-defined]
    return subset


def _loader(dataset: Dataset, cfg: ExperimentCfg, batch: int, env: DistEnv, **kwargs: Any) -> DataLoader:
    workers = cfg.loader.workers
    return DataLoader(
        dataset,
        batch_size=batch,
        num_workers=workers,
        pin_memory=cfg.loader.pin_memory and env.device.type == "cuda",
        **kwargs,
    )
