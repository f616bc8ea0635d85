"""bench/gpu_check.sh: its --dry-run runs every stage on the CPU as a fresh GPU machine would (a copied
archive, an empty data cache, no ../shared) and leaves at most 8 files at the top of its out folder;
the stage limits fit one 590-s call; the preflight installs missing wheels and names what to carry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402  (bench/ is no package)

sys.path.remove(str(ROOT / "bench"))
CALL_S = 590  # one device call


def _args(tmp_path: Path, *extra: str) -> object:
    archive = tmp_path / "cifar10-jpeg.tar.xz"
    archive.write_bytes(b"")  # parse_args only checks that it is a file
    return gpu_check.parse_args(["--archive", str(archive), "--out", str(tmp_path / "out"), *extra])


@pytest.mark.parametrize("dry", [False, True])
def test_goal_stages_come_first_and_every_limit_fits_one_call(tmp_path: Path, dry: bool) -> None:
    args = _args(tmp_path, *(["--dry-run"] if dry else []))
    plan = gpu_check.stages(args, tmp_path / "work", tmp_path / "out")
    names = [stage.name for stage in plan]
    models = [m for m, _ in (gpu_check.DRY_STEP_MODELS if dry else gpu_check.STEP_MODELS)]
    assert names == ["teacher recipe", "student recipe", *(f"step {m}" for m in models), "cuda tests"]
    assert sum(stage.limit_s for stage in plan) + gpu_check.INSTALL_RESERVE_S <= args.budget_s <= CALL_S - 10
    teacher, student = plan[0].command, plan[1].command
    assert "experiments/teacher_cifar10_gpu.yaml" in teacher and "experiments/deit_tiny_distilled_cifar10_gpu.yaml" in student
    if not dry:  # the goal: the GPU recipe at its batch of 512, with the teacher the stage before trained
        assert not any(item.startswith(("loader.batch_size", "loader.limit")) for item in student)
        assert f"teacher.checkpoint={tmp_path / 'work' / 'runs' / 'teacher_cifar10_gpu' / 'last.pt'}" in student


def test_the_cuda_stage_runs_issue_26s_tests_first_and_every_file_with_cuda_tests() -> None:
    files = gpu_check.cuda_test_files()
    assert files[: len(gpu_check.FIRST_TESTS)] == gpu_check.FIRST_TESTS
    assert {"tests/test_registry_steps.py", "tests/engine/test_gpu_runs.py", "tests/bench/test_bench_smoke.py"} <= set(files)
    assert "tests/bench/test_gpu_check.py" not in files and not any(f.startswith("tests/tracking") for f in files)


def _wheel(folder: Path, name: str, version: str) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "VALUE = 26\n")
        wheel.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return path


def test_the_preflight_installs_only_what_is_missing_from_carried_wheels(tmp_path: Path, monkeypatch) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "carried_pkg26", "1.2.0")
    _wheel(wheels, "unwanted_pkg26", "1.0")  # carried, but nobody lacks it: not installed
    required = [gpu_check.Requirement("carried_pkg26", "1.1", wheels=("carried_pkg26",))]
    monkeypatch.setattr(gpu_check, "REQUIREMENTS", required)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert gpu_check.problems() == {"carried_pkg26": "not installed"}
    site = tmp_path / "site"
    assert gpu_check.install_missing(wheels, site) == ["carried_pkg26-1.2.0-py3-none-any.whl"]
    assert gpu_check.problems() == {} and not (site / "unwanted_pkg26").exists()
    too_new = [gpu_check.Requirement("carried_pkg26", "1.0", "1.2", why="the 1.2 API")]
    assert gpu_check.problems(too_new) == {"carried_pkg26": "1.2.0 installed, >=1.0,<1.2 needed (the 1.2 API)"}


def test_a_machine_without_the_dependencies_is_told_what_to_carry(tmp_path: Path) -> None:
    bare = tmp_path / "python-bare"  # this interpreter without site-packages: the standard library only
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    bare.chmod(0o755)
    archive = tmp_path / "cifar10-jpeg.tar.xz"
    archive.write_bytes(b"")
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--archive", str(archive), "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHON": str(bare)}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "gpu_check: torch: not installed" in done.stderr and "gpu_check: omegaconf: not installed" in done.stderr
    assert "carry wheels of" in done.stderr and "--fetch-wheels" in done.stderr and "--wheels" in done.stderr
    assert not (tmp_path / "out").exists()  # it stopped before writing anything


@pytest.mark.slow
def test_dry_run_runs_every_stage_as_a_fresh_gpu_machine_would(tmp_path: Path) -> None:
    archive, cache = tmp_path / "carried" / "cifar10-jpeg.tar.xz", tmp_path / "empty-cache"
    archive.parent.mkdir()
    shutil.copyfile(ARCHIVE, archive)  # the archive where ../shared does not exist, and nothing extracted yet
    out, work = tmp_path / "out", tmp_path / "work"
    command = ["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out), "--work", str(work)]
    command += ["--archive", str(archive), "--cache-dir", str(cache)]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable}
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(path.name for path in out.iterdir())
    assert all((out / name).is_file() for name in files) and len(files) <= 8, files  # a device returns 8 files
    assert {"summary.json", "summary.md", "throughput.csv", "cuda_tests.xml", "stages.log"} <= set(files)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True and all(stage["status"] == "passed" for stage in summary["stages"]), summary["stages"]
    data_stages = [stage["command"] for stage in summary["stages"] if "launchers/local.py" in stage["command"]]
    assert len(data_stages) == 2 and all(f"data.archive={archive}" in c and f"data.cache_dir={cache}" in c for c in data_stages)
    assert not any("shared" in item for stage in summary["stages"] for item in stage["command"])
    assert any(cache.iterdir())  # extracted there, from the copied archive
    tests = summary["cuda_tests"]
    assert tests["skipped"] > 50 and tests["passed"] == tests["failed"] == 0  # on a CPU every cuda test skips
    step = summary["steps"]["deit_nano_patch4_32"]
    assert step["engine_img_s"] > 0 and step["forward_gflop"] > 0 and step["mfu"] is None
    for recipe in ("teacher", "student"):
        assert summary[recipe]["status"] == "done" and summary[recipe]["epochs"] == 1
        assert summary[recipe]["img_s_end_to_end"] > 0 and 0 <= summary[recipe]["val_top1"] <= 100
    table = (out / "throughput.csv").read_text()
    assert "deit_nano_patch4_32,32,16,bf16,cpu,,step," in table  # the measured step rate, merged into the table
    assert "deit_base_patch16_224,224,128,bf16,h200" in table  # beside the package's own rows
    markdown = (out / "summary.md").read_text()
    assert "dry run on the CPU" in markdown and "| deit_nano_patch4_32 |" in markdown and "student recipe: done" in markdown
