"""The recipe's per-image data pipeline alone: one worker's rate, DataLoaders, against the step rate."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from research.registry import AUGMENTATIONS, DATASETS
from speed.settings import Settings
from speed.steps import StepResult
from speed.timing import interleaved, median_rate, progress


@dataclass
class DataResult:
    source: str
    recipe: str
    techniques: list[str]
    per_worker_img_s: float  # one process, one thread: what one DataLoader worker can deliver
    per_worker_jpeg_img_s: float | None  # the same, decoding each CIFAR JPEG file per item (reference way)
    loader_img_s: dict[str, float]  # DataLoader(num_workers=w) alone, on this machine's cores
    step_img_s: float | None = None  # the fastest measured engine step it has to feed
    workers_needed: float | None = None  # step rate / per-worker rate, if the workers had cores of their own
    shared_core_img_s: float | None = None  # estimate with data and step sharing the cores (CPU only)


def training_recipe(img_size: int) -> Any:
    """The DeiT recipe the benchmark runs: ``cifar`` at 32 px (padded crop), ``deit`` above."""
    return AUGMENTATIONS.build("cifar" if img_size <= 32 else "deit", img_size=img_size)


def augmentation_dataset(settings: Settings, transform: Callable[[Any], Any], img_size: int) -> tuple[Dataset, str]:
    source = settings.data
    if source == "auto":
        source = "cifar10_jpeg" if img_size <= 32 else "synthetic"
    if source == "cifar10_jpeg":
        if img_size != 32:
            raise SystemExit(f"--data cifar10_jpeg holds 32x32 images; {settings.model} takes {img_size}: use --data synthetic")
        dataset = DATASETS.build("cifar10_jpeg", split="train", transform=transform, archive=settings.archive, in_memory=True)
        return dataset, "cifar10_jpeg (in_memory)"
    # A few hundred distinct images are enough: the pipeline's cost does not depend on the pixels.
    dataset = DATASETS.build("synthetic", split="train", transform=transform, size=256, img_size=img_size)
    return dataset, f"synthetic {img_size}px"


def measure_data(settings: Settings, *, img_size: int) -> DataResult:
    """The recipe's per-image pipeline (PIL image -> augmented, normalised tensor) in one thread, and
    through DataLoaders; for CIFAR-10 also from the JPEG files (decoded per item, the reference way)."""
    recipe = training_recipe(img_size)
    dataset, source = augmentation_dataset(settings, recipe.train_transform, img_size)
    datasets = {"memory": dataset}
    if source.startswith("cifar10_jpeg"):
        datasets["jpeg"] = DATASETS.build(
            "cifar10_jpeg", split="train", transform=recipe.train_transform, archive=settings.archive
        )
    generator = torch.Generator().manual_seed(0)
    count = settings.data_images

    def block(items: Dataset) -> Callable[[], None]:
        def run() -> None:
            for index in torch.randint(len(items), (count,), generator=generator).tolist():  # type: ignore[arg-type]
                items[index]

        return run

    blocks = {name: block(items) for name, items in datasets.items()}
    progress(f"data: {source}, recipe {recipe.name}: {settings.repeats} rounds of {count} images per source, one thread")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker runs with
    try:
        for warm_up in blocks.values():
            warm_up()
        seconds = interleaved(blocks, repeats=settings.repeats).seconds
    finally:
        torch.set_num_threads(threads)
    loader_rates = {}
    for workers in (1, 2):
        progress(f"data: DataLoader with {workers} worker(s), {settings.loader_batches} batches of {settings.batch}")
        loader_rates[str(workers)] = loader_rate(dataset, workers=workers, batch=settings.batch, batches=settings.loader_batches)
    return DataResult(
        source=source,
        recipe=recipe.name,
        techniques=recipe.techniques(),
        per_worker_img_s=median_rate(seconds["memory"], count),
        per_worker_jpeg_img_s=median_rate(seconds["jpeg"], count) if "jpeg" in seconds else None,
        loader_img_s=loader_rates,
    )


def loader_rate(dataset: Dataset, *, workers: int, batch: int, batches: int) -> float:
    """Images/s a ``DataLoader`` delivers with ``workers`` processes, counted after its first batch."""
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch * (batches + 1))  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # worker start-up excluded
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - started
    del iterator
    return batches * batch / seconds


def attach_step_rate(data: DataResult, steps: list[StepResult], *, cores: int, on_gpu: bool) -> None:
    """Whether the data side keeps up with the fastest measured engine step (distilled if measured)."""
    if not steps:
        return
    rate = max(s.distilled_img_s if s.distilled_img_s is not None else s.engine_img_s for s in steps)
    data.step_img_s = rate
    data.workers_needed = rate / data.per_worker_img_s
    if not on_gpu:
        # Per image, the step occupies the whole machine for 1/rate s, and one worker's augmentation
        # one core for 1/per_worker s (1/(cores x per_worker) s of the machine): the best both can share.
        data.shared_core_img_s = 1 / (1 / rate + 1 / (cores * data.per_worker_img_s))
