"""bench/data_share.py: times the loader, the step on a fixed batch and the step on real batches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _data_share(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "bench/data_share.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_data_share_times_loader_and_steps_per_worker_count(tmp_path: Path) -> None:
    out = tmp_path / "share.json"
    done = _data_share(
        "--images", "64", "--workers", "0", "1", "--out", str(out),
        "model.name=resnet10_cifar", "loader.batch_size=16", "data.in_memory=false",
    )  # fmt: skip
    results = json.loads(out.read_text())
    assert results["images"] == 64 and set(results["workers"]) == {"0", "1"}
    for workers, rates in results["workers"].items():
        assert f"{workers} worker(s): loader alone" in done.stdout
        assert rates["loader_img_s"] > 0 and rates["fixed_batch_img_s"] > 0 and rates["real_batches_img_s"] > 0
        assert rates["data_share"] == 1 - rates["real_batches_img_s"] / rates["fixed_batch_img_s"]


def test_data_share_times_crop_and_flip_on_whole_batches(tmp_path: Path) -> None:
    experiment = tmp_path / "tiny_teacher.yaml"
    experiment.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "resnet10_cifar", "img_size": 32},
                "data": {"name": "synthetic", "size": 96, "num_classes": 4},
                "aug": {"name": "none", "simple_crop": True},
                "loader": {"batch_size": 16},
                "optim": {"name": "sgd", "lr": 0.1},
                "logger": {"name": "none"},
            }
        )
    )
    out = tmp_path / "share.json"
    done = _data_share("--experiment", str(experiment), "--images", "64", "--workers", "0", "--batch-augment", "--out", str(out))
    assert set(json.loads(out.read_text())["workers"]) == {"0", "batch_augment"}
    assert "crop and flip on whole batches (loader.batch_augment): loader alone" in done.stdout


def test_data_share_refuses_an_empty_pass() -> None:
    done = subprocess.run(
        [sys.executable, "bench/data_share.py", "--images", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "--images must be >= 1" in done.stderr
