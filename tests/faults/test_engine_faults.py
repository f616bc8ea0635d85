"""Faults injected inside one process, at a precise point of the training loop: a preemption signal
between a step's update and its records. The run then resumes and is compared with an uninterrupted one."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from research.config import load_run
from research.engine import checkpoint
from research.engine.fit import StepMeter
from research.launch.job import TrainJob
from research.launch.train import train

from .harness import STEPS, compare, reference_run, write_run

pytestmark = pytest.mark.slow


class Preempted(Exception):
    """Ends the first life once the preemption checkpoint is written (SLURM would requeue the job)."""


def test_usr2_between_the_update_and_its_records_saves_them_together(tmp_path: Path, monkeypatch, ledger) -> None:
    reference = reference_run(tmp_path / "reference")
    run = load_run(write_run(tmp_path / "preempted"))
    job = TrainJob(run, launch_dir=".")
    target = STEPS + 5  # mid-epoch: the state a preemption checkpoint is written from
    add = StepMeter.add

    def add_after_usr2(meter: StepMeter, loss, logs) -> None:
        # submitit's USR2 handler calls job.checkpoint(); here the signal lands after the step's update
        # (state.step counts it) and before the meter adds its loss: the window the issue names.
        if job._loop is not None and job._loop.state.step == target:
            signal.raise_signal(signal.SIGUSR2)
        add(meter, loss, logs)
        if job._loop is not None and job._loop.state.step == target:
            raise Preempted

    def on_usr2(signum, frame) -> None:
        job.checkpoint()

    previous = signal.signal(signal.SIGUSR2, on_usr2)
    monkeypatch.setattr(StepMeter, "add", add_after_usr2)
    try:
        with pytest.raises(Preempted):
            train(run, on_loop=job._attach)
    finally:
        signal.signal(signal.SIGUSR2, previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # checkpoint() ignores SIGTERM for the requeue
    monkeypatch.undo()
    saved = checkpoint.load(run.run_dir / "last.pt")
    sums = saved["epoch_sums"]
    # the checkpoint's steps and the records it carries are the same steps
    counted = saved["epoch"] * STEPS + (sums["steps"] if sums else 0)
    assert counted == saved["step"], (saved["step"], sums and sums["steps"])

    summary = train(load_run(write_run(tmp_path / "preempted")))
    outcome = compare(run.run_dir, reference)
    survived = summary["status"] == "done" and counted == saved["step"]
    ledger.record("USR2 inside a step", survived=survived, lost_or_duplicated=outcome.records_off, identical=outcome.identical)
    assert outcome.records_off == 0 and outcome.identical
