"""The run's tracker (``logger:`` section), told who the run is: W&B group = the experiment (the
ablation), job type = the variant (its seeds pooled), name = the run, notes = the experiment file's
header comment (which holds the paper's figures). What the tracker hands back (its W&B run) is recorded
in the life's line of ``lives.jsonl`` here: a tracker writes no file of the run dir's.

Once a run starts, it logs a grid of the first training images as the student's step sees them
(augmented, then mixed), so that a reader of an augmentation ablation sees what each variant changes.
The batch is drawn under its own seed stream and the generators are restored afterwards
(:func:`research.seeding.fork`): the preview changes nothing the run draws."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchvision.utils import make_grid

from research import seeding
from research.config import Run
from research.config.components import SECTIONS, build_component
from research.config.expand import without_seed
from research.config.sources import header_comment
from research.engine.checkpoint import DiskFull
from research.engine.fit import TrainData
from research.engine.run_dir import note_life, read_lives
from research.engine.state import unwrap
from research.launch.dist import DistEnv
from research.launch.run_data import RunData
from research.registry import LOSSES
from research.tracking import DEFAULT_PROJECT, RunInfo, flatten_config

log = logging.getLogger(__name__)

PREVIEW_KEY = "train/augmented_images"


def run_tags(run: Run, data: RunData) -> tuple[str, ...]:
    """The data-efficiency techniques that are on, so W&B can filter and colour by them."""
    cfg = run.cfg
    tags = list(data.recipe.techniques())
    if LOSSES.info(cfg.loss["name"]).needs_teacher:
        tags.append(f"distill-{cfg.loss['name']}")
    if cfg.train.ema:
        tags.append("ema")
    if cfg.model.get("drop_path_rate"):
        tags.append("stochastic-depth")
    if cfg.train.label_smoothing:
        tags.append("label-smoothing")
    if run.is_baseline and run.variant:
        tags.append("baseline")
    if without_seed(run.variant):
        tags.append(f"ablate:{without_seed(run.variant)}")  # what this run changes, as a filter
    tags.append(f"seed:{cfg.seed}")
    return tuple(tags)


def build_tracker(run: Run, record: dict[str, Any], data: RunData, model: nn.Module, env: DistEnv, life: int) -> Any:
    n_parameters = sum(p.numel() for p in unwrap(model).parameters())
    config = {
        **flatten_config(record),
        "git_commit": record["git"]["commit"],
        "n_parameters": n_parameters,
        "variant": without_seed(run.variant),  # the seed is its own key, `seed`
        "is_baseline": run.is_baseline,
    }
    info = RunInfo(
        run_dir=run.run_dir,
        project=run.cfg.logger.get("project") or DEFAULT_PROJECT,
        group=run.experiment,
        name=run.name,
        job_type=without_seed(run.variant) or run.cfg.job_type,  # the config keeps job_type (train, teacher, ...)
        tags=run_tags(run, data),
        config=config,
        is_rank_zero=env.is_main,
        life=max(life, 1),
        lives=tuple(read_lives(run.run_dir)) if env.is_main else (),
        notes=header_comment(run.source),
    )
    tracker = build_component(SECTIONS["logger"], run.cfg.logger, run=info)
    note_tracker(tracker, info)
    return tracker


def note_tracker(tracker: Any, run: RunInfo) -> None:
    """Record what ``tracker`` hands back about this life (``notes``: its W&B run) in its line of ``lives.jsonl``."""
    if notes := getattr(getattr(tracker, "inner", tracker), "notes", None):  # a GuardedTracker forwards to ``inner``
        try:  # best effort: the tracker is live; losing it would be worse than losing the stitch to the next life
            note_life(run.run_dir, run.life, **notes)
        except (OSError, DiskFull) as exc:
            log.warning("cannot record life %d's tracker in %s: %s", run.life, run.run_dir, exc)


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
