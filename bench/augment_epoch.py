"""The student's training epoch with its DeiT recipe per image (PIL) and on whole batches, side by side.

Both paths train the CIFAR student (``experiments/deit_micro_distilled_cifar10.yaml``: RandAugment
m5, random erasing, mixup/cutmix, hard distillation from the airbench CNN) on the same slice of the
real data, in one process, with the experiment's loader (``loader.workers=0``: the augmentation runs
in line). Rounds are interleaved (per image, batched, per image, ...) so a neighbour on the cores
slows both alike; the medians are reported. The teacher has random weights: speed does not depend on
them. Run from the repository root::

    python bench/augment_epoch.py                       # 2560 images per epoch, 5 rounds
    python bench/augment_epoch.py --images 5120 --rounds 7 --out /tmp/augment_epoch.json

It prints, per path, the loader alone (augmentation only) and the training phase of an epoch
(augmentation, mixing, teacher, student step), and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from research.config import load_run
from research.engine.fit import Loop, train_step
from research.launch.train import assemble
from research.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
PATHS = {"per_image": ["loader.batch_augment=false"], "batched": ["loader.batch_augment=true"]}


def time_epoch(loop: Loop, epoch: int) -> dict[str, float]:
    """Seconds of the loader alone, and of the training phase (loader + step), for one epoch."""
    started = time.perf_counter()
    for _ in loop.data.train_batches(epoch, 0):
        pass
    loader = time.perf_counter() - started
    started, images = time.perf_counter(), 0
    for batch, targets in loop.data.train_batches(epoch, 0):
        train_step(loop, batch, targets)
        images += len(batch)
    return {"loader_s": loader, "epoch_s": time.perf_counter() - started, "images": images}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, default=ROOT / "experiments" / "deit_micro_distilled_cifar10.yaml")
    parser.add_argument("--images", type=int, default=2560, help="training images per epoch (loader.limit_train)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per path")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (this machine: 2 cores)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, key=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="augment_epoch_") as workdir:
        teacher = Path(workdir) / "teacher.pt"
        torch.save(MODELS.build("airbench_cifar", num_classes=10).state_dict(), teacher)
        common = [
            "teacher.from_experiment=null", "teacher.name=airbench_cifar", f"teacher.checkpoint={teacher}",
            f"loader.limit_train={args.images}", "loader.limit_val=256", "logger.name=none", "train.progress=false",
            *args.overrides,
        ]  # fmt: skip
        runs = {path: load_run(args.experiment, [*extra, *common, f"output_dir={workdir}/{path}"]) for path, extra in PATHS.items()}
        loops = {path: assemble(run).loop for path, run in runs.items()}
        for loop in loops.values():  # warm-up: allocator, oneDNN primitives, first-touch of the arrays
            time_epoch(loop, 0)
        times: dict[str, list[dict[str, float]]] = {path: [] for path in loops}
        for round_ in range(args.rounds):
            for path, loop in loops.items():
                times[path].append(time_epoch(loop, 1 + round_))
    results: dict[str, Any] = {"experiment": str(args.experiment), "images": args.images, "rounds": args.rounds}
    for path, runs in times.items():
        loader, epoch = statistics.median(r["loader_s"] for r in runs), statistics.median(r["epoch_s"] for r in runs)
        images = runs[0]["images"]
        results[path] = {"loader_img_s": images / loader, "epoch_img_s": images / epoch, "epoch_s": epoch, "loader_s": loader}
        print(f"{path:9s}: loader alone {images / loader:7.0f} img/s; training phase {images / epoch:5.0f} img/s ({epoch:.2f} s / {images} images)")
    ratio = results["per_image"]["epoch_s"] / results["batched"]["epoch_s"]
    results["speedup"] = ratio
    print(f"batched / per image: {ratio:.2f}x the training-phase speed (medians of {args.rounds} interleaved rounds)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
