"""How much of a training epoch the data path costs, for any experiment (default: the CIFAR teacher).

For each DataLoader worker count it times, on the experiment's real data slice and in one process:

* the loader alone (decode from memory, the recipe's per-image augmentation, collation);
* the engine's ``train_step`` repeated on one fixed batch (the step without data);
* the engine's ``train_step`` on the loader's batches (the training phase of an epoch).

The loop is built by :func:`research.launch.train.assemble`, as ``train`` builds it, so the model,
objective, optimizer and loader are the experiment's. Run from the repository root::

    python bench/data_share.py                                  # teacher_cifar10.yaml, 10240 images
    python bench/data_share.py --experiment experiments/deit_micro_distilled_cifar10.yaml --images 5120

The share of the data path is ``1 - real / fixed``. Check ``uptime`` first: a neighbour on the two
cores changes every rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from speed.loops import loop_of  # the Loop that train() trains with

from research.config import load_run
from research.engine.fit import Loop, train_step

ROOT = Path(__file__).resolve().parents[1]


def measure(loop: Loop, images: int) -> dict[str, float]:
    """img/s of the loader alone, of steps on one fixed batch, and of steps on the loader's batches."""
    started, count = time.perf_counter(), 0
    for batch_images, _ in loop.data.train_batches(0, 0):
        count += len(batch_images)
    loader = count / (time.perf_counter() - started)

    fixed = next(iter(loop.data.train_batches(0, 0)))
    for _ in range(3):  # warm-up: allocator, oneDNN primitives
        train_step(loop, *fixed)
    steps = max(1, images // len(fixed[0]))
    started = time.perf_counter()
    for _ in range(steps):
        train_step(loop, *fixed)
    fixed_rate = steps * len(fixed[0]) / (time.perf_counter() - started)

    started, count = time.perf_counter(), 0
    for batch_images, targets in loop.data.train_batches(1, 0):
        train_step(loop, batch_images, targets)
        count += len(batch_images)
    real = count / (time.perf_counter() - started)
    return {"loader_img_s": loader, "fixed_batch_img_s": fixed_rate, "real_batches_img_s": real, "data_share": 1 - real / fixed_rate}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "teacher_cifar10.yaml")
    parser.add_argument("--images", type=int, default=10240, help="training images per pass (loader.limit_train)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="DataLoader worker counts to compare")
    parser.add_argument(
        "--batch-augment", action="store_true", help="also time loader.batch_augment=true (crop and flip on whole batches)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (this machine: 2 cores)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, key=value")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"experiment": str(args.experiment), "images": args.images, "workers": {}}
    # The per-image path cannot alternate flips (it has no epoch or row per image): random flips there.
    per_image = ["loader.batch_augment=false", "aug.alternate_flip=false"]
    paths: list[tuple[str, list[str]]] = [(str(w), [f"loader.workers={w}", *per_image]) for w in args.workers]
    if args.batch_augment:
        paths.append(("batch_augment", ["loader.batch_augment=true", "loader.workers=0"]))
    with tempfile.TemporaryDirectory(prefix="data_share_") as workdir:
        for label, path_overrides in paths:
            overrides = [
                *path_overrides,
                f"loader.limit_train={args.images}",
                "loader.limit_val=256",
                "logger.name=none",
                "train.progress=false",
                f"output_dir={workdir}/{label}",
                *args.overrides,
            ]
            rates = measure(loop_of(load_run(args.experiment, overrides)), args.images)
            results["workers"][label] = rates
            name = "crop and flip on whole batches (loader.batch_augment)" if label == "batch_augment" else f"{label} worker(s)"
            print(
                f"{name}: loader alone {rates['loader_img_s']:.0f} img/s, step on a fixed batch "
                f"{rates['fixed_batch_img_s']:.0f} img/s, step on the loader's batches {rates['real_batches_img_s']:.0f} "
                f"img/s: the data path costs {100 * rates['data_share']:.0f}% of the training phase",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
