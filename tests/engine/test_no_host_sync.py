"""The step never waits on the host, and a non-finite loss is never saved nor ends a run ``done``."""

from __future__ import annotations

import json
import os
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
import torch

from research.config import load_run
from research.engine import checkpoint
from research.engine.fit import train_step
from research.engine.meter import StepMeter
from research.engine.run_dir import read_summary
from research.launch.train import assemble, train
from research.registry import MODELS

ROOT = Path(__file__).resolve().parents[2]
# bench/gpu_check.sh names the archive where ../shared does not exist (a GPU box)
ARCHIVE = os.environ.get("RESEARCH_CIFAR_ARCHIVE", str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"))

SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__")  # what makes the host wait for a GPU


def test_steps_read_nothing_back_until_the_log_step(experiment, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = assemble(load_run(experiment(train={"epochs": 1, "progress": False, "ema": True}))).loop
    batches = list(loop.data.train_batches(0, 0))
    meter = StepMeter(loop.device, 8)
    reads: list[str] = []

    def host_side(tensor: torch.Tensor) -> bool:  # AdamW's step counters live on the CPU, also beside a GPU
        return any(tensor is state.get("step") for state in loop.state.optimizer.state.values())

    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, _original: Any = original, _name: str = name) -> Any:
            if not host_side(self):
                reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)

    for images, targets in batches[:3]:
        train_step(loop, images, targets, meter)
    assert reads == []  # three steps (forward, loss, backward, AdamW, EMA, lr) without one read
    logs = meter.window(step=3)
    assert len(reads) == 1 and logs["train/loss"] > 0  # one read for the whole window


def test_a_non_finite_loss_is_never_saved_and_the_run_fails(experiment) -> None:
    options = {"epochs": 1, "progress": False, "checkpoint_every_steps": 2, "log_every_steps": 100}
    run = load_run(experiment(logger={"name": "jsonl"}, train=options))

    def poison_step_3(loop: Any) -> None:
        objective, calls = loop.objective, []

        def poisoned(images: torch.Tensor, outputs: Any, targets: torch.Tensor) -> Any:
            result = objective(images, outputs, targets)
            calls.append(1)
            if len(calls) == 3:
                result.loss = result.loss * float("nan")
            return result

        loop.objective = poisoned

    with pytest.raises(FloatingPointError, match="not finite"):
        train(run, on_loop=poison_step_3)
    saved = checkpoint.load(run.run_dir / "last.pt")
    assert saved["step"] == 2  # the checkpoint of step 4 was refused: its weights came from a NaN step
    assert read_summary(run.run_dir)["status"] == "failed"
    for line in (run.run_dir / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda constant: pytest.fail(f"{constant} in log.jsonl"))


def test_json_lines_stay_strict_with_a_non_finite_value(tmp_path) -> None:
    from research.engine.run_dir import RunDir
    from research.tracking.jsonl import JsonlTracker

    RunDir(tmp_path, config={}).append_metrics({"epoch": 1, "val/loss": float("nan"), "val/top1": 10.0})
    tracker = JsonlTracker(tmp_path / "log.jsonl", tmp_path / "summary.json")
    tracker.log({"val/loss": float("inf")}, step=3)
    tracker.close()
    strict = {"parse_constant": lambda constant: pytest.fail(f"bare {constant}")}
    (epoch,) = [json.loads(line, **strict) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    (step,) = [json.loads(line, **strict) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert epoch["val/loss"] is None and epoch["val/top1"] == 10.0 and step["val/loss"] is None


@pytest.mark.cuda
@pytest.mark.slow
def test_gpu_student_steps_make_no_host_sync(tmp_path: Path) -> None:
    """The GPU student recipe (batch augmentation on the device, mixup/CutMix, the teacher, bf16,
    fused AdamW) under ``torch.cuda.set_sync_debug_mode("error")``: any call that makes the host
    wait for the GPU raises. The first step runs before (lazy one-time set-up is not a step's cost)."""
    teacher = tmp_path / "teacher.pt"
    torch.save(MODELS.build("airbench_cifar", num_classes=10).state_dict(), teacher)
    overrides = [
        f"output_dir={tmp_path / 'runs'}", f"data.archive={ARCHIVE}", f"data.cache_dir={tmp_path / 'cache'}",
        "logger.name=none", f"teacher={{name: airbench_cifar, checkpoint: {teacher}, channels_last: true}}",
    ]  # fmt: skip
    run = load_run(ROOT / "experiments" / "deit_tiny_distilled_cifar10_gpu.yaml", overrides)
    loop = assemble(run).loop
    assert loop.device.type == "cuda" and loop.data.mix is not None and loop.options.precision == "bf16"
    meter = StepMeter(loop.device, loop.data.batch_size)
    batches = iter(loop.data.train_batches(0, 0))
    train_step(loop, *next(batches), meter)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for images, targets in islice(batches, 4):  # the batch's augmentation runs as the loader yields it
            train_step(loop, images, targets, meter)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert meter.window(step=5)["train/loss"] > 0
