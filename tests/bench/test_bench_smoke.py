"""bench/throughput.py: the reference loop computes what the engine computes, and a --tiny run
reports every measurement."""

from __future__ import annotations

import copy
import json
import math
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "throughput.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench/throughput.py")


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # timm's Mixup draws from numpy
    torch.manual_seed(seed)  # drop path


def test_reference_step_matches_the_engine_step(bench: ModuleType, tmp_path: Path) -> None:
    """Same weights, same batch, same random draws: same loss and same updated weights, so the
    engine/reference ratio compares two ways of doing one computation."""
    settings = bench.Settings()
    settings.shrink()
    checkpoint = bench.random_teacher_checkpoint(settings.teacher, tmp_path / "teacher.pt")
    experiment = bench.bench_experiment(settings, precision="fp32", teacher_checkpoint=checkpoint, workdir=tmp_path)
    loop = bench.build_loop(experiment, tmp_path)
    model, optimizer = copy.deepcopy((loop.state.model, loop.state.optimizer))
    criterion = bench.reference_loss_for(loop)
    images = torch.randn(settings.batch, 3, 32, 32)
    targets = torch.randint(0, bench.NUM_CLASSES, (settings.batch,))

    _seed(1)
    engine_loss = bench.train_step(loop, images.clone(), targets).item()
    _seed(1)
    reference_loss = bench.reference_step(model, criterion, optimizer, loop.data.mix, images.clone(), targets, "fp32")

    assert engine_loss == pytest.approx(reference_loss, rel=1e-5)
    for (name, engine_param), reference_param in zip(loop.state.model.named_parameters(), model.parameters()):
        torch.testing.assert_close(engine_param, reference_param, msg=name)


def test_flops_count_attention(bench: ModuleType) -> None:
    """The CPU attention kernel is counted: a nano DeiT's forward is more than its linear layers."""
    model = bench.MODELS.build("deit_nano_patch4_32", num_classes=10).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens, width, depth = 65, 64, 2  # 64 patches + class token; nano: width 64, depth 2
    linear = depth * tokens * 2 * (12 * width * width)  # qkv 3, proj 1, MLP 8 (x D^2), 2 FLOPs per MAC
    attention = depth * 4 * tokens * tokens * width  # QK^T and AV
    assert bench.forward_flops(model, images) == pytest.approx(linear + attention, rel=0.05)


def test_odd_batch_is_refused(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--batch", "15"])
    assert exit_info.value.code == 2
    assert "even batch" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_run_prints_and_writes_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for heading in (
        "ceiling GFLOP/s",
        "engine img/s",
        "explicit matmuls",
        "With the teacher",
        "Data: recipe cifar",
        "DataLoader alone",
    ):
        assert heading in done.stdout, heading

    results = json.loads(out.read_text())
    assert {"machine", "settings", "flops", "steps", "ceiling_gflop_s", "data", "wall_time_s"} <= set(results)
    assert results["settings"]["tiny"] is True
    assert set(results["flops"]) == {"student", "teacher"}
    assert [s["precision"] for s in results["steps"]] == ["fp32", "bf16"]
    for step in results["steps"]:
        for key in (
            "ceiling_gflop_s",
            "engine_img_s",
            "reference_img_s",
            "engine_over_reference",
            "ceiling_fraction",
            "distilled_img_s",
            "reference_distilled_img_s",
            "distilled_engine_over_reference",
            "teacher_time_share",
            "teacher_flop_share",
            "eager_attention_img_s",
            "eager_attention_speedup",
        ):
            assert isinstance(step[key], float) and math.isfinite(step[key]), key
        assert set(step["block_seconds"]) == {
            "matmul",
            "engine",
            "reference",
            "engine_eager_attention",
            "engine_distilled",
            "reference_distilled",
        }
    data = results["data"]
    assert data["per_worker_img_s"] > 0 and set(data["loader_img_s"]) == {"1", "2"}
    assert data["workers_needed"] > 0 and data["shared_core_img_s"] > 0


@pytest.mark.slow
def test_compile_option_times_a_compiled_engine_step(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--compile", "--precision", "bf16", "--teacher", "none", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Engine step with train.compile" in done.stdout
    (step,) = json.loads(out.read_text())["steps"]
    assert "engine_compiled" in step["block_seconds"] and len(step["block_seconds"]["engine_compiled"]) == 2
    assert step["compiled_img_s"] > 0 and math.isfinite(step["compiled_speedup"])


@pytest.mark.slow
def test_epoch_option_times_the_engine_and_the_reference_on_real_cifar(tmp_path: Path) -> None:
    archive = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--epoch", "--epoch-rounds", "2", "--epoch-reference-workers", "1",
         "--archive", str(archive), "--out", str(out)],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "One CIFAR-10 epoch" in done.stdout and "medians of 2 rounds" in done.stdout
    assert "every later epoch" in done.stdout and "per round, first epoch / later epochs" in done.stdout

    epoch = json.loads(out.read_text())["epoch"]
    assert epoch["images"] == 64 and epoch["val_images"] == 16 and len(epoch["rounds"]) == 2
    assert (epoch["workers"], epoch["reference_workers"]) == (0, 1)  # --epoch-reference-workers 1 above
    assert "DataLoader workers: engine 0, reference 1" in done.stdout
    for who in ("engine", "reference"):
        phases = epoch[f"{who}_phases"]
        assert all(seconds >= 0 for seconds in phases.values()), phases
        assert min(r[f"{who}_s"] for r in epoch["rounds"]) <= epoch[f"{who}_s"] <= max(r[f"{who}_s"] for r in epoch["rounds"])
    assert epoch["engine_phases"]["teacher_eval_s"] > 0  # the tiny run distils, so the engine checks its teacher
    for key in ("reference_over_engine", "reference_over_engine_per_epoch"):
        per_round = [r[key] for r in epoch["rounds"]]
        assert math.isclose(epoch[key], sum(per_round) / 2)  # the median of two rounds
    for r in epoch["rounds"]:
        assert math.isclose(r["reference_over_engine"], r["reference_s"] / r["engine_s"])
