"""Each training image's random draws, seeded by its place in the epoch.

A loader's workers draw from per-worker generators, so an image's crop depends on which worker got
its batch and on what that worker drew before: a mid-epoch resume, which starts the epoch's loader
past the batches already trained, or another ``loader.workers``, would give every later image other
draws. :class:`PlaceSeeded` seeds torch, numpy and ``random`` before each image from (seed, epoch,
rank, place in the epoch): the draws are those of an uninterrupted run, with any number of workers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class PlaceSeeded(Dataset):
    """``dataset[index]`` with the generators seeded first; items are ``(index, seed)`` pairs (:func:`placed`)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        return self.dataset[index]


def placed(indices: Sequence[int], *, seed: int, epoch: int, rank: int, start: int = 0) -> list[tuple[int, int]]:
    """``(index, seed)`` for the epoch's ``indices``, the first at place ``start`` of the epoch."""
    base = ((seed * 1_000_003 + epoch) * 1_000_003 + rank) * 1_000_000_007
    return [(index, (base + start + place) % 2**63) for place, index in enumerate(indices)]
