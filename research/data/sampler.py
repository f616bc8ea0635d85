"""Samplers: repeated augmentation for training, unpadded sharding for evaluation.

Repeated augmentation (Hoffer et al. 2020; Berman et al. 2019) puts several copies of each image in
an epoch, each augmented differently; DeiT reports it as one of the key ingredients (Table 8). The
reference ``RASampler`` spreads the copies of one image over different GPUs and keeps the epoch at
``len(dataset)`` images, but rounds the per-epoch count down to a multiple of 256, which yields zero
samples below 256 images. :class:`RepeatedAugSampler` keeps the idea without the rounding.

The epoch's permutation comes from the run's ``("data", epoch)`` stream (:mod:`research.seeding`):
the data order depends on the seed and the epoch alone. The reference seeds it with the epoch alone,
ignoring ``--seed`` (``seed_epoch_only``, ``loader.sampler_seed: epoch_only``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from research import seeding

__all__ = ["RepeatedAugSampler", "ShardSampler", "build_eval_sampler", "build_train_sampler"]


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """Explicit values, else the initialised process group's, else a single process."""
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=} {rank=}")
    return num_replicas, rank


def _length(data: Sized | int) -> int:
    n = data if isinstance(data, int) else len(data)
    if n < 1:
        raise ValueError("cannot sample from an empty dataset")
    return n


class RepeatedAugSampler(Sampler[int]):
    """Each epoch, ``repeats`` consecutive copies of shuffled images, dealt round-robin to the ranks.

    An epoch takes a random permutation, repeats every index ``repeats`` times in place
    (``[a, a, a, b, b, b, ...]``), keeps the first ``ceil(n / num_replicas) * num_replicas`` entries
    (wrapping around if that is more than ``n * repeats``), and gives rank ``r`` the entries
    ``r, r + num_replicas, ...``. So every rank yields ``ceil(n / num_replicas)`` indices, an epoch is
    about ``n`` samples in total (about ``n / repeats`` distinct images, a different subset each epoch),
    and the copies of one image go to different ranks whenever ``num_replicas >= repeats``. On one
    process the copies sit next to each other in a batch, which is repeated augmentation proper.
    ``repeats=1`` is ``torch.utils.data.DistributedSampler``'s algorithm, on this sampler's generator.

    Args:
        data: The dataset or its length.
        num_replicas: Number of ranks; default: the process group's world size, or 1.
        rank: This process's rank; default: the process group's rank, or 0.
        repeats: Copies of each image (>= 1).
        shuffle: Shuffle per epoch; if False the order is ``0, 0, 0, 1, 1, 1, ...``.
        seed: The run's seed: each epoch's permutation is its ``("data", epoch)`` stream, identical on all ranks.
        seed_epoch_only: Seed the permutation with the epoch alone, as the reference's ``RASampler``
            (``torch.Generator().manual_seed(epoch)``): the data order then ignores ``seed``.
    """

    def __init__(
        self,
        data: Sized | int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        repeats: int = 3,
        shuffle: bool = True,
        seed: int = 0,
        seed_epoch_only: bool = False,
    ) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.dataset_len = _length(data)
        self.num_replicas, self.rank = _world(num_replicas, rank)
        self.repeats = repeats
        self.shuffle = shuffle
        self.seed = seed
        self.seed_epoch_only = seed_epoch_only
        self.epoch = 0
        self.num_samples = math.ceil(self.dataset_len / self.num_replicas)  # per rank
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation; call before iterating each epoch, on every rank."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            if self.seed_epoch_only:
                generator = torch.Generator().manual_seed(self.epoch)
            else:
                generator = seeding.generator(self.seed, "data", self.epoch)
            order = torch.randperm(self.dataset_len, generator=generator)
        else:
            order = torch.arange(self.dataset_len)
        copies = order.repeat_interleave(self.repeats)  # (n * repeats,): [a, a, a, b, b, b, ...]
        if len(copies) < self.total_size:  # tiny dataset or repeats=1: wrap around like DistributedSampler
            copies = copies.repeat(math.ceil(self.total_size / len(copies)))
        mine = copies[: self.total_size][self.rank :: self.num_replicas]  # (num_samples,)
        return iter(mine.tolist())

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.dataset_len}, repeats={self.repeats}, rank={self.rank}/"
            f"{self.num_replicas}, per_rank={self.num_samples}, seed={self.seed}, epoch={self.epoch})"
        )


class ShardSampler(Sampler[int]):
    """Rank ``r`` gets indices ``r, r + num_replicas, ...`` in order, without padding.

    Every image is evaluated exactly once over all ranks, so ranks may differ by one sample: reduce
    sums and counts across ranks (not per-rank means), and do not rely on equal batch counts.
    """

    def __init__(self, data: Sized | int, *, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.dataset_len = _length(data)
        self.num_replicas, self.rank = _world(num_replicas, rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.dataset_len, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.dataset_len, self.num_replicas))


def build_train_sampler(
    dataset: Sized, *, repeats: int, num_replicas: int, rank: int, seed: int, seed_epoch_only: bool = False
) -> RepeatedAugSampler:
    """The training sampler for ``Recipe.repeats``: repeated augmentation if > 1, else each image once
    per epoch, shuffled and sharded as ``DistributedSampler`` does (no process group needed when
    ``num_replicas``/``rank`` are given).

    It needs ``set_epoch(epoch)`` before each epoch, or every epoch repeats the same order.
    """
    return RepeatedAugSampler(
        dataset, num_replicas=num_replicas, rank=rank, repeats=repeats, seed=seed, seed_epoch_only=seed_epoch_only
    )


def build_eval_sampler(dataset: Sized, *, num_replicas: int, rank: int) -> ShardSampler:
    """Evaluation sampler: each image exactly once over all ranks, no padding (see :class:`ShardSampler`)."""
    return ShardSampler(dataset, num_replicas=num_replicas, rank=rank)
