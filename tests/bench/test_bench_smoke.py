"""bench/throughput.py: the reference loop computes what the engine computes, FLOPs are counted
right, and a --tiny run reports every measurement."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from speed.flops import flops_by_device, model_flops, spec_peak_tflops
from speed.loops import NUM_CLASSES, build_loop, random_teacher_checkpoint
from speed.reference import ReferenceSettings, reference_loss_for, reference_step
from speed.settings import Settings, parse_args
from speed.steps import bench_experiment

from research.engine.fit import seed_step, train_step
from research.models.flops import registered_flops
from research.registry import MODELS

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "throughput.py"


def test_reference_step_matches_the_engine_step(tmp_path: Path) -> None:
    """Same weights, same batch, same random draws: same loss and same updated weights, so the
    engine/reference ratio compares two ways of doing one computation."""
    settings = Settings()
    settings.shrink()
    checkpoint = random_teacher_checkpoint(settings.teacher, tmp_path / "teacher.pt")
    experiment = bench_experiment(settings, precision="fp32", teacher_checkpoint=checkpoint, workdir=tmp_path)
    loop = build_loop(experiment, tmp_path, torch.device("cpu"))
    model, optimizer = copy.deepcopy((loop.state.model, loop.state.optimizer))
    criterion = reference_loss_for(loop)
    images = torch.randn(settings.batch, 3, 32, 32)
    targets = torch.randint(0, NUM_CLASSES, (settings.batch,))

    step = loop.state.step
    engine_loss = train_step(loop, images.clone(), targets).item()  # draws seeded from (seed, rank, step)
    seed_step(loop.options.seed, loop.rank, step)  # the same draws for the reference
    equal = ReferenceSettings.equal_to("fp32", torch.device("cpu"))
    reference_loss = reference_step(model, criterion, optimizer, loop.data.mix, images.clone(), targets, equal)

    assert engine_loss == pytest.approx(reference_loss, rel=1e-5)
    for (name, engine_param), reference_param in zip(loop.state.model.named_parameters(), model.parameters()):
        torch.testing.assert_close(engine_param, reference_param, msg=name)


def test_flop_counts_by_device_on_a_cpu_are_the_eval_count() -> None:
    model = MODELS.build("deit_nano_patch4_32", num_classes=10)
    counts = flops_by_device(model, 32, torch.device("cpu"))
    assert list(counts) == ["cpu_eval"] and counts["cpu_eval"] == pytest.approx(model_flops(model, 32))
    assert counts["cpu_eval"] == pytest.approx(registered_flops("deit_nano_patch4_32", 32, num_classes=10))  # the package's count
    assert model.training  # counted on a copy: the caller's model keeps its mode


def test_spec_peaks_by_card_name() -> None:
    assert spec_peak_tflops("NVIDIA H200", "bf16") == pytest.approx(989.4)
    assert spec_peak_tflops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756.0)  # not the SXM entry
    assert spec_peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == pytest.approx(19.5)
    assert spec_peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 tensor cores
    assert spec_peak_tflops("cpu", "bf16") is None


def test_odd_batch_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--batch", "15"])
    assert exit_info.value.code == 2
    assert "even batch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "cpu", "--precision", "fp16"], "fp16 needs a GPU"),
        (["--device", "tpu"], "--device tpu"),
        (["--warmup", "-1"], "--warmup must be >= 0"),
    ],
)
def test_bad_device_options_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_device_defaults_follow_the_machine() -> None:
    settings = parse_args(["--device", "cpu"])
    assert settings.torch_device() == torch.device("cpu") and settings.matmul_size == 2048
    assert ReferenceSettings.deit(torch.device("cpu")) == ReferenceSettings("fp32", False, torch.device("cpu"))
    assert ReferenceSettings.deit(torch.device("cuda")) == ReferenceSettings("fp16", True, torch.device("cuda"))


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
    assert {"machine", "settings", "flops", "flop_counts", "steps", "ceiling_gflop_s", "data", "wall_time_s"} <= set(results)
    assert results["settings"]["tiny"] is True and results["machine"]["device"] == "cpu"
    assert list(results["flop_counts"]) == ["cpu_eval"] and results["flop_counts"]["cpu_eval"] == results["flops"]["student"]
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
        assert step["device"] == "cpu" and step["mfu"] is None and step["spec_peak_tflops"] is None  # no data sheet for a CPU
        assert step["reference_deit_img_s"] is None  # on a CPU, deit's way is the fp32 reference row itself
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


@pytest.mark.cuda
def test_the_flop_counter_agrees_across_devices_modes_and_batches() -> None:
    """MFU divides by the CPU eval-mode count; on a GPU, training mode at batch 8 must count the same
    per image (one measurement once saw 1/8 of it there)."""
    model = MODELS.build("deit_small_patch16_224", num_classes=1000)
    counts = flops_by_device(model, 224, torch.device("cuda"), batch=8)
    assert set(counts) == {"cpu_eval", "cuda_eval_batch8", "cuda_train_batch8"}
    for key, value in counts.items():
        assert value == pytest.approx(counts["cpu_eval"], rel=0.01), (key, counts)
