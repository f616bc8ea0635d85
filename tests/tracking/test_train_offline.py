"""A real training run logged to W&B in offline mode, read back from its ``.wandb`` file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from tiny import TINY, deep_update
from wandb_reader import read_runs

from research.cli import main


def logged_to_wandb(wandb_env: Path, images: int, **sections: Any) -> dict[str, Any]:
    """The tiny experiment (tests/tiny.py) on ``images`` synthetic images of 4 classes, batches of 8,
    logged to W&B offline, with ``sections`` merged in."""
    base = {"output_dir": str(wandb_env / "runs"), "data": {"size": images, "num_classes": 4}, "loader": {"batch_size": 8},
            "logger": {"name": "wandb", "project": "deit-tests"}}  # fmt: skip
    return deep_update(deep_update(TINY, base), sections)


def test_training_run_writes_an_offline_wandb_run_with_group_name_config_and_history(wandb_env: Path) -> None:
    experiment = logged_to_wandb(
        wandb_env, 32, name="ablate_hflip", train={"epochs": 2, "log_every_steps": 2}, ablation={"grid": {"aug.hflip": [0.5]}}
    )
    path = wandb_env / "ablate_hflip.yaml"
    path.write_text(yaml.safe_dump(experiment))
    assert main(["train", str(path)]) == 0

    run_dir = wandb_env / "runs" / "ablate_hflip" / "hflip=0.5"
    (run,) = read_runs(run_dir, count=1)
    assert (run.project, run.group, run.name, run.job_type) == ("deit-tests", "ablate_hflip", "ablate_hflip/hflip=0.5", "hflip=0.5")
    assert {"hflip", "label-smoothing", "stochastic-depth", "baseline"} <= set(run.tags)
    assert run.config["optim.lr"] == 5e-4 and run.config["aug.hflip"] == 0.5 and run.config["model.name"] == "deit_nano_patch4_32"
    assert run.config["n_parameters"] > 0
    assert run.config["git_commit"] == yaml.safe_load((run_dir / "config.yaml").read_text())["git"]["commit"]

    steps = [step for step, _ in run.metric("train/loss")]
    assert len(steps) == 4 and steps == sorted(steps)  # 4 steps per epoch, logged every 2 steps, 2 epochs
    top1 = run.metric("val/top1")
    assert len(top1) == 2 and all(0.0 <= value <= 100.0 for _, value in top1)
    assert run.summary["status"] == "done" and run.summary["epochs_done"] == 2
    assert run.summary["best_top1"] == max(value for _, value in top1)


def test_seeded_runs_carry_variant_seed_tags_and_the_files_header_as_notes(wandb_env: Path) -> None:
    experiment = logged_to_wandb(wandb_env, 16, ablation={"baseline": "full", "variants": {"full": {}, "no_flip": {"aug.hflip": 0.0}}})
    path = wandb_env / "ablate_flip.yaml"
    header = "# Ablation: what does flipping bring?\n# Paper: none; a test.\n"
    path.write_text(header + yaml.safe_dump(experiment))
    assert main(["train", str(path), "--only", "no_flip", "--seeds", "2"]) == 0

    runs = {}
    for seed in (0, 1):
        (run,) = read_runs(wandb_env / "runs" / "ablate_flip" / "no_flip" / f"seed{seed}", count=1)
        runs[seed] = run
    for seed, run in runs.items():
        assert (run.group, run.job_type, run.name) == ("ablate_flip", "no_flip", f"ablate_flip/no_flip/seed{seed}")
        assert run.config["variant"] == "no_flip" and run.config["seed"] == seed and run.config["is_baseline"] is False
        assert {"ablate:no_flip", f"seed:{seed}"} <= set(run.tags) and "baseline" not in run.tags
        assert run.notes == "Ablation: what does flipping bring?\nPaper: none; a test."


def test_a_run_logs_a_grid_of_its_augmented_training_images_once_at_the_start(wandb_env: Path) -> None:
    """What a variant's recipe does to the images, on the dashboard: one image grid (the first batch's
    first 16 images after the recipe and mixup/CutMix), logged at step 0 of the run's first life; the
    run's weights and losses are those of a run without the preview (it draws on its own stream)."""
    from PIL import Image
    from wandb_reader import find_run_files

    experiment = {
        "name": "ablate_preview",
        "output_dir": str(wandb_env / "runs"),
        "model": {"name": "deit_nano_patch4_32", "img_size": 32},
        "data": {"name": "synthetic", "size": 32, "num_classes": 4},
        "aug": {"name": "none", "simple_crop": True, "mixup": 0.8, "cutmix": 1.0},
        "logger": {"name": "wandb", "project": "deit-tests"},
        "loader": {"batch_size": 16, "workers": 0},
        "sched": {"warmup_epochs": 0},
        "train": {"epochs": 1, "log_every_steps": 1, "progress": False},
    }
    path = wandb_env / "ablate_preview.yaml"
    path.write_text(yaml.safe_dump(experiment))
    assert main(["train", str(path)]) == 0
    run_dir = wandb_env / "runs" / "ablate_preview"
    (run,) = read_runs(run_dir, count=1)
    key = "train/augmented_images"
    rows = [row for row in run.history if f"{key}/_type" in row]  # the reader flattens the image's record
    assert len(rows) == 1 and rows[0]["trainer/step"] == 0
    assert rows[0][f"{key}/_type"] == "image-file" and rows[0][f"{key}/caption"] == "ablate_preview"
    (run_file,) = find_run_files(run_dir)
    grid = Image.open(run_file.parent / "files" / rows[0][f"{key}/path"])
    assert grid.size == (2 + 4 * (32 + 2), 2 + 4 * (32 + 2))  # 16 images of 32 px, 4 by 4, 2 px apart

    quiet = {**experiment, "name": "no_preview", "logger": {"name": "none"}}
    quiet_path = wandb_env / "no_preview.yaml"
    quiet_path.write_text(yaml.safe_dump(quiet))
    assert main(["train", str(quiet_path)]) == 0
    logged, unlogged = (json.loads((wandb_env / "runs" / name / "metrics.jsonl").read_text().splitlines()[-1]) for name in ("ablate_preview", "no_preview"))
    assert logged["train/epoch_loss"] == unlogged["train/epoch_loss"] and logged["val/loss"] == unlogged["val/loss"]
