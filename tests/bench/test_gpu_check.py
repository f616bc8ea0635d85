"""bench/gpu_check.sh: its --dry-run runs every stage on the CPU and writes both summaries; a machine
without the project's dependencies is told which wheels to carry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_writes_the_summaries(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    names = [stage["name"] for stage in summary["stages"]]
    assert names == [
        "cuda tests", "step deit_nano_patch4_32", "teacher recipe", "student recipe, batched", "student recipe, per image",
    ]  # fmt: skip
    assert all(stage["status"] == "passed" for stage in summary["stages"]), summary["stages"]
    tests = summary["cuda_tests"]
    assert tests["skipped"] > 50 and tests["passed"] == tests["failed"] == 0  # on a CPU every cuda test skips
    step = summary["steps"]["deit_nano_patch4_32"]
    assert step["engine_img_s"] > 0 and step["forward_gflop"] > 0 and step["mfu"] is None
    for recipe in ("teacher", "student", "student_per_image"):
        assert summary[recipe]["status"] == "done" and summary[recipe]["epochs"] == 1
        assert 0 <= summary[recipe]["val_top1"] <= 100
    table = (out / "throughput.csv").read_text()
    assert "deit_nano_patch4_32,32,16,bf16,cpu,,step," in table  # the measured step rate, merged into the table
    assert "deit_base_patch16_224,224,128,bf16,h200" in table  # beside the package's own rows
    markdown = (out / "summary.md").read_text()
    assert "dry run on the CPU" in markdown and "| deit_nano_patch4_32 |" in markdown and "student recipe (batched): done" in markdown


def test_the_cuda_stage_collects_every_file_with_cuda_tests() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from gpu_check import cuda_test_files
    finally:
        sys.path.remove(str(ROOT / "bench"))
    files = cuda_test_files()
    assert {"tests/test_registry_steps.py", "tests/engine/test_gpu_runs.py", "tests/bench/test_bench_smoke.py"} <= set(files)
    assert "tests/bench/test_gpu_check.py" not in files and not any(f.startswith("tests/tracking") for f in files)


def test_a_machine_without_the_dependencies_is_told_what_to_carry(tmp_path: Path) -> None:
    bare = tmp_path / "python-bare"  # this interpreter without site-packages: the standard library only
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    bare.chmod(0o755)
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHON": str(bare)},
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot import: torch" in done.stderr and "--wheels" in done.stderr
