"""A 2-variant CIFAR-10 ablation, tiny, run the way a user runs it: launchers/local.py, then research report."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"


@pytest.mark.slow
def test_cifar10_ablation_through_local_launcher_then_report(tmp_path: Path) -> None:
    assert ARCHIVE.exists(), f"the CIFAR-10 archive is expected at {ARCHIVE}"
    experiment = {
        "_base_": str(REPO / "experiments" / "base" / "cifar10.yaml"),
        "name": "ablate_mixup_tiny",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "deit_nano_patch4_32"},
        "data": {"archive": str(ARCHIVE), "in_memory": False},
        "loader": {"batch_size": 32, "workers": 0, "limit_train": 256, "limit_val": 128},
        "sched": {"warmup_epochs": 0},  # one epoch: base/cifar10.yaml's 2-epoch warm-up would be refused
        "train": {"epochs": 1, "progress": False},
        "logger": {"name": "none"},
        "ablation": {"baseline": "mixup=0.8", "grid": {"aug.mixup": [0.8, 0.0]}},
    }
    path = tmp_path / "ablate_mixup_tiny.yaml"
    path.write_text(yaml.safe_dump(experiment))

    subprocess.run([sys.executable, str(REPO / "launchers" / "local.py"), str(path)], check=True, cwd=tmp_path)
    report_dir = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "research.cli", "report", str(path), "--out", str(report_dir)],
        check=True, cwd=tmp_path, capture_output=True, text=True,
    )
    assert f"report written to {report_dir}" in result.stdout

    rows = list(csv.DictReader((report_dir / "runs.csv").open()))
    assert [row["variant"] for row in rows] == ["mixup=0.8", "mixup=0"]
    assert all(row["status"] == "done" for row in rows)
    markdown = (report_dir / "report.md").read_text()
    assert "| mixup=0.8" in markdown and "| mixup=0 " in markdown and "done" in markdown
    for name in ("top1_curves.png", "top1_delta.png"):
        with Image.open(report_dir / name) as image:
            assert image.format == "PNG" and min(image.size) >= 200
