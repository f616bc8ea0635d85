"""Faults injected inside one process: a preemption signal between a step's update and its records
(the run then resumes and is compared with an uninterrupted one); a teacher retrained in place between
two lives of its student."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from research.cli import main
from research.config import load_run
from research.engine import checkpoint
from research.engine.meter import StepMeter
from research.engine.run_dir import read_lives, read_metrics
from research.launch.backends.slurm import TrainJob
from research.launch.run_check import TEACHER_KEY
from research.launch.train import train
from research.teachers.checkpoint import teacher_digest

from .harness import STEPS, compare, last_line, reference_run, run_dir_of, write_run

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


def test_a_teacher_retrained_under_a_half_trained_student_stops_its_resume(tmp_path: Path, capsys, ledger) -> None:
    def teacher(seed: int) -> Path:
        path = write_run(tmp_path / f"teacher{seed}", model={"name": "resnet9_slim_cifar"}, seed=seed, train={"epochs": 1})
        train(load_run(path))
        return checkpoint.load(path.parent / "runs" / "faulty" / "last.pt")

    teacher_file = tmp_path / "teacher.pt"
    first = teacher(0)
    torch.save(first, teacher_file)
    distil = {
        "model": {"name": "deit_nano_distilled_patch4_32"},
        "loss": {"name": "hard"},
        "teacher": {"name": "resnet9_slim_cifar", "checkpoint": str(teacher_file)},
    }
    student = write_run(tmp_path / "student", train={"epochs": 1}, **distil)
    train(load_run(student))  # the first life: one epoch with the first teacher
    run_dir = run_dir_of(student)
    torch.save(teacher(1), teacher_file)  # the teacher retrained in place, under the student

    status = main(["train", str(student), "train.epochs=2"])
    err = capsys.readouterr().err
    line = last_line(err)
    assert status == 2 and "Traceback" not in err, err
    assert line.startswith("research train: error: ") and str(teacher_file) in line and "--force" in line, line
    assert len(read_lives(run_dir)) == 1 and len(read_metrics(run_dir)) == 2  # nothing written: teacher line + epoch 1

    torch.save(first, teacher_file)  # the teacher restored: the student resumes
    status = main(["train", str(student), "train.epochs=2"])
    lives = read_lives(run_dir)
    assert status == 0 and [life["life"] for life in lives] == [1, 2]
    assert lives[0][TEACHER_KEY] == lives[1][TEACHER_KEY] == teacher_digest(str(teacher_file))
    ledger.record("teacher retrained under its student", survived=status == 0, identical=None)
