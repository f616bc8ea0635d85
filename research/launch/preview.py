"""A grid of the first training images as the student's step sees them (augmented, then mixed), logged
once when a run starts, so that a reader of an augmentation ablation sees what each variant changes.

The batch is drawn under its own seed stream and the generators are restored afterwards
(:func:`research.seeding.fork`): the preview changes nothing the run draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.utils import make_grid

from research import seeding
from research.engine.fit import TrainData

PREVIEW_KEY = "train/augmented_images"


def augmented_grid(data: TrainData, *, seed: int, rank: int, count: int = 16) -> np.ndarray:
    """The first ``count`` images of epoch 0's first batch after the recipe and mixup/CutMix, as one
    ``(H, W, 3)`` uint8 grid (the normalisation undone: every recipe normalises with ImageNet's mean/std)."""
    with seeding.fork(seed, "process", rank):
        first = next(iter(data.train_batches(0, 0)))
        images, targets = first[0][:count], first[1][:count]
        if len(first) == 3:  # uint8 pixels and their draws: the step's transform makes the images
            assert data.augment is not None
            images = data.augment(first[0], first[2])[:count]
        images = images.float()
        if data.mix is not None and len(images) > 1:
            images, _ = data.mix.apply(images, targets, data.mix.draw(images.shape, images.device))
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=images.device).view(1, 3, 1, 1)
    pixels = (images * std + mean).clamp(0, 1)
    grid = make_grid(pixels.cpu(), nrow=int(np.ceil(np.sqrt(len(pixels)))), padding=2, pad_value=1.0)  # (3, H, W)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def log_preview(tracker: Any, data: TrainData, *, seed: int, rank: int, caption: str) -> bool:
    """Log the grid to a tracker that takes images (W&B: ``images``); returns whether it was logged."""
    inner = getattr(tracker, "inner", tracker)  # a GuardedTracker forwards to what it guards
    if not callable(getattr(tracker, "images", None)) or not callable(getattr(inner, "images", None)):
        return False  # no image to make for a tracker that takes none (jsonl, none)
    return bool(tracker.images(PREVIEW_KEY, augmented_grid(data, seed=seed, rank=rank), step=0, caption=caption))
