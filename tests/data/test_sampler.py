"""Repeated-augmentation sampler, the train/eval sampler helpers, and a loader using all of data/."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from research import seeding
from research.data import RepeatedAugSampler, ShardSampler, build_eval_sampler, build_train_sampler
from research.registry import AUGMENTATIONS, DATASETS


def _epoch(n: int, world: int, *, repeats: int = 3, epoch: int = 0, seed: int = 0) -> list[list[int]]:
    """Indices of every rank for one epoch."""
    ranks = []
    for rank in range(world):
        sampler = RepeatedAugSampler(n, num_replicas=world, rank=rank, repeats=repeats, seed=seed)
        sampler.set_epoch(epoch)
        ranks.append(list(sampler))
    return ranks


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("n", [10, 100, 257, 1000])
def test_lengths_and_coverage(world: int, n: int):
    ranks = _epoch(n, world)
    per_rank = math.ceil(n / world)
    assert [len(r) for r in ranks] == [per_rank] * world
    assert all(len(RepeatedAugSampler(n, num_replicas=world, rank=r)) == per_rank for r in range(world))
    counts = Counter(i for r in ranks for i in r)
    assert sum(counts.values()) == per_rank * world  # ~n samples per epoch in total, never 0
    assert all(0 <= i < n for i in counts)
    # n * world-rounding samples of ~n / 3 images, each 3 times (the last one may be cut short)
    assert len(counts) == math.ceil(per_rank * world / 3)
    assert sorted(counts.values())[1:] == [3] * (len(counts) - 1)


@pytest.mark.parametrize("world", [4, 3])
def test_copies_land_on_different_ranks(world: int):
    ranks = _epoch(120, world)
    owners: dict[int, list[int]] = {}
    for rank, indices in enumerate(ranks):
        for i in indices:
            owners.setdefault(i, []).append(rank)
    assert all(len(set(r)) == len(r) for r in owners.values())


def test_world_size_one_keeps_copies_adjacent():
    (indices,) = _epoch(30, 1)
    assert all(indices[k] == indices[k + 1] == indices[k + 2] for k in range(0, 30, 3))


def test_two_ranks_split_copies():
    """Fewer ranks than copies: each image still reaches both ranks (2 copies on one, 1 on the other)."""
    first, second = _epoch(60, 2)
    assert set(first) == set(second)
    assert sorted(Counter(first + second).values()) == [3] * 20


def test_deterministic_per_epoch_and_seed_and_epochs_differ():
    assert _epoch(100, 2, epoch=3, seed=7) == _epoch(100, 2, epoch=3, seed=7)
    assert _epoch(100, 2, epoch=3) != _epoch(100, 2, epoch=4)
    assert _epoch(100, 2, seed=0) != _epoch(100, 2, seed=1)
    subsets = [set(_epoch(300, 1, epoch=e)[0]) for e in range(4)]
    assert len(set.union(*subsets)) > 150  # different images are repeated each epoch


def test_repeats_one_is_distributed_samplers_algorithm_on_the_data_stream():
    """repeats=1 shards and pads as DistributedSampler does, its permutation drawn from the ("data", epoch) stream."""
    for world in (1, 2, 4):
        for rank in range(world):
            ours = RepeatedAugSampler(10, num_replicas=world, rank=rank, repeats=1, seed=5)
            theirs = DistributedSampler(range(10), num_replicas=world, rank=rank, shuffle=False)
            for epoch in (0, 1):
                ours.set_epoch(epoch)
                order = torch.randperm(10, generator=seeding.generator(5, "data", epoch)).tolist()
                assert list(ours) == [order[i] for i in theirs]


def test_sampler_seed_epoch_only_is_the_references_order():
    """loader.sampler_seed_epoch_only: the permutation of torch.Generator().manual_seed(epoch), whatever the seed."""
    for seed in (0, 7):
        sampler = RepeatedAugSampler(12, num_replicas=1, rank=0, repeats=1, seed=seed, seed_epoch_only=True)
        sampler.set_epoch(3)
        assert list(sampler) == torch.randperm(12, generator=torch.Generator().manual_seed(3)).tolist()
    default = RepeatedAugSampler(12, num_replicas=1, rank=0, repeats=1, seed=0)
    default.set_epoch(3)
    assert list(default) != list(sampler)


def test_seed_and_epoch_do_not_trade_places():
    """The old convention seeded with seed + epoch: (seed 0, epoch 1) was (seed 1, epoch 0)."""
    assert _epoch(100, 2, seed=0, epoch=1) != _epoch(100, 2, seed=1, epoch=0)


def test_no_shuffle_and_tiny_datasets():
    assert list(RepeatedAugSampler(4, num_replicas=1, rank=0, shuffle=False)) == [0, 0, 0, 1]
    assert _epoch(1, 4) == [[0], [0], [0], [0]]  # wraps around rather than yielding nothing
    with pytest.raises(ValueError, match="empty"):
        RepeatedAugSampler(0, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="rank"):
        RepeatedAugSampler(10, num_replicas=2, rank=2)


def test_defaults_without_process_group():
    sampler = RepeatedAugSampler(list(range(9)))
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (1, 0, 9)


def test_build_train_sampler():
    data = list(range(10))
    assert isinstance(build_train_sampler(data, repeats=3, num_replicas=2, rank=1, seed=0), RepeatedAugSampler)
    plain = build_train_sampler(data, repeats=1, num_replicas=2, rank=1, seed=0)
    assert plain.repeats == 1 and len(plain) == 5


@pytest.mark.parametrize("world", [1, 2, 4])
def test_eval_sampler_covers_each_image_once(world: int):
    shards = [list(build_eval_sampler(range(10), num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    assert [len(ShardSampler(10, num_replicas=world, rank=r)) for r in range(world)] == [len(s) for s in shards]


def test_loader_with_recipe_sampler_and_mixup():
    """The pieces together as the engine uses them: synthetic data, cifar recipe, RA sampler, Mixup."""
    recipe = AUGMENTATIONS.build("cifar", img_size=32)
    dataset = DATASETS.build("synthetic", split="train", transform=recipe.train_transform, size=20)
    sampler = build_train_sampler(dataset, repeats=recipe.repeats, num_replicas=2, rank=0, seed=0)
    sampler.set_epoch(0)
    recipe.check_batch_size(4)
    mix = recipe.mixup(num_classes=len(dataset.classes), label_smoothing=0.1)
    batches = list(DataLoader(dataset, batch_size=4, sampler=sampler, drop_last=True))
    assert len(batches) == 10 // 4
    images, targets = mix(*batches[0])
    assert images.shape == (4, 3, 32, 32) and targets.shape == (4, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
