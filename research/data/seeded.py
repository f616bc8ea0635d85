"""Each training image's random draws, seeded by its place in the epoch.

A loader's workers draw from per-worker generators, so an image's crop depends on which worker got
its batch and on what that worker drew before: a mid-epoch resume, which starts the epoch's loader
past the batches already trained, or another ``loader.workers``, would give every later image other
draws. :class:`PlaceSeeded` puts torch, numpy and ``random`` on the ``("image", epoch, rank, place)``
stream of the run's seed (:mod:`research.seeding`) before each image: the draws are those of an
uninterrupted run, with any number of workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from research import seeding

Item = tuple[int, tuple[int, int, int, int]]  # (index, (seed, epoch, rank, place))


class PlaceSeeded(Dataset):
    """``dataset[index]`` with the generators on the image's stream first; items come from :func:`placed`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Item) -> Any:
        index, (seed, epoch, rank, place) = item
        seeding.seed_globals(seed, "image", epoch, rank, place)
        return self.dataset[index]


def placed(indices: Sequence[int], *, seed: int, epoch: int, rank: int, start: int = 0) -> list[Item]:
    """The items of the epoch's ``indices`` for :class:`PlaceSeeded`, the first at place ``start`` of the epoch."""
    return [(index, (seed, epoch, rank, start + place)) for place, index in enumerate(indices)]
