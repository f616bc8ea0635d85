"""Two DDP processes on this CPU (gloo), through the local launcher's elastic launch."""

from __future__ import annotations

import pytest

from research.config import load_run
from research.engine import checkpoint
from research.engine.run_dir import read_metrics
from research.launch.local import run_locally


@pytest.mark.slow
def test_two_process_ddp_run_trains_and_reduces_metrics(experiment) -> None:
    run = load_run(
        experiment(
            model={"name": "deit_nano_distilled_patch4_32"},
            aug={"name": "none", "simple_crop": True, "repeated_aug": 2},
            data={"name": "synthetic", "size": 40, "num_classes": 4},
            train={"epochs": 1, "progress": False, "log_every_steps": 1},
        )
    )
    run_locally([run], nproc=2)
    (record,) = [m for m in read_metrics(run.run_dir) if "val/top1" in m]
    # 40 val images split over 2 ranks; the all-reduced accuracy is a multiple of 1/40
    assert (record["val/top1"] / 100 * 40) == pytest.approx(round(record["val/top1"] / 100 * 40), abs=1e-6)
    saved = checkpoint.load(run.run_dir / "last.pt")
    assert saved["epoch"] == 1 and not any(k.startswith("module.") for k in saved["model"])
    # an epoch is 40 samples in all (20 images seen twice), 20 per rank: 2 full steps of 8
    assert saved["step"] == 2
