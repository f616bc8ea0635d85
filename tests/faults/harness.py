"""Runs to inject faults into: a small experiment trained by ``research train`` in a subprocess,
polled through its per-step log, and compared with an uninterrupted run of the same config."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from research.engine import checkpoint
from research.engine.run_dir import read_metrics

EPOCHS, STEPS = 3, 16  # steps per epoch: 512 images in batches of 32
RUN: dict[str, Any] = {
    "name": "faulty",
    "model": {"name": "deit_nano_patch4_32", "img_size": 32},
    "data": {"name": "synthetic", "size": 512},
    "aug": {"name": "none", "simple_crop": True},
    "logger": {"name": "jsonl"},  # a line per step: the test sees where training is
    "loader": {"batch_size": 32, "workers": 0},
    "sched": {"warmup_epochs": 0},
    # one thread: the same arithmetic in every process, so runs compare bit for bit
    "train": {"epochs": EPOCHS, "log_every_steps": 1, "progress": False, "threads": 1},
}


def write_run(folder: Path, **sections: Any) -> Path:
    """The experiment file ``folder/faulty.yaml`` (runs under ``folder/runs``), sections merged over :data:`RUN`."""
    config = {**RUN, "output_dir": str(folder / "runs")}
    for key, value in sections.items():
        config[key] = {**RUN[key], **value} if isinstance(RUN.get(key), dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "faulty.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_dir_of(path: Path) -> Path:
    return path.parent / "runs" / "faulty"


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    def finish(self, timeout_s: float = 180) -> tuple[int, str, str]:
        try:
            status = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            pytest.fail(f"research train did not end within {timeout_s:.0f}s:\n{self.err.read_text()}")
        return status, self.out.read_text(), self.err.read_text()


def start(path: Path, *args: str, tag: str = "train") -> Process:
    """``research train path args...`` in a new process (its own session: signals reach it alone)."""
    out, err = path.parent / f"{tag}.out", path.parent / f"{tag}.err"
    command = [sys.executable, "-m", "research.cli", "train", str(path), *args]
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        popen = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=path.parent, start_new_session=True)
    return Process(popen, out, err)


def logged_step(run_dir: Path) -> int:
    """The last step the run logged (0 before the first)."""
    file = run_dir / "log.jsonl"
    if not file.exists():
        return 0
    steps = [json.loads(line)["step"] for line in file.read_text().split("\n")[:-1]]  # whole lines only
    return max(steps, default=0)


def wait_for_step(run_dir: Path, step: int, process: Process | None = None, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while (reached := logged_step(run_dir)) < step:
        if process is not None and process.popen.poll() is not None:
            pytest.fail(f"the run ended before step {step}:\n{process.err.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"step {step} not reached within {timeout_s:.0f}s (at {reached})")
        time.sleep(0.02)
    return reached


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass
class Outcome:
    lost: int  # epochs with no metrics line
    duplicated: int  # epochs with more than one
    identical: bool  # final weights and every epoch's record (RECORDED) equal the uninterrupted run's

    @property
    def records_off(self) -> int:
        return self.lost + self.duplicated


#: What an epoch's record must repeat exactly. Under DDP a mid-epoch checkpoint holds rank 0's loss sums
#: only (research/engine/meter.py StepMeter.resume_epoch), so the resumed epoch's train/epoch_loss differs there.
RECORDED = ("val/loss", "val/top1", "train/epoch_loss")
VALIDATION = ("val/loss", "val/top1")


def compare(run_dir: Path, reference: Path, epochs: int = EPOCHS, keys: tuple[str, ...] = RECORDED) -> Outcome:
    lines = [m for m in read_metrics(run_dir) if m["epoch"] >= 1]
    seen = [m["epoch"] for m in lines]
    lost = sum(1 for epoch in range(1, epochs + 1) if epoch not in seen)
    duplicated = len(seen) - len(set(seen))
    ours = {m["epoch"]: [m.get(key) for key in keys] for m in lines}
    theirs = {m["epoch"]: [m.get(key) for key in keys] for m in read_metrics(reference) if m["epoch"] >= 1}
    a, b = checkpoint.load(run_dir / "last.pt")["model"], checkpoint.load(reference / "last.pt")["model"]
    same_weights = a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    return Outcome(lost, duplicated, same_weights and ours == theirs)


def reference_run(folder: Path, **sections: Any) -> Path:
    """An uninterrupted run of the config (its run dir)."""
    path = write_run(folder, **sections)
    status, _, err = start(path, tag="reference").finish()
    assert status == 0, err
    return run_dir_of(path)

