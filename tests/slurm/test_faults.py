"""Faults injected into SLURM jobs on the real one-node cluster: preemption (USR2) and a requeue by
the controller mid-epoch, ``scancel``, and two launchers started at the same instant. Each faulted run
of two DDP ranks is compared with an uninterrupted job of the same config: no epoch record lost or
written twice, and the resumed run ends bit-identical to it (tests/faults/ledger.py counts them)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from faults.harness import VALIDATION, compare, logged_step
from test_launcher import JOB_TIMEOUT_S, TINY, job_of, launch, squeue, wait_until

from research.engine import checkpoint
from research.engine.run_dir import read_lives, read_summary

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS, EPOCHS = 16, 2  # per rank and epoch: 256 images over 2 ranks in batches of 8
FAULTY: dict[str, Any] = {
    **TINY,
    "data": {**TINY["data"], "size": 2 * STEPS * 8},
    "logger": {"name": "jsonl"},  # a line per step: the test sees where training is
    "train": {**TINY["train"], "epochs": EPOCHS, "log_every_steps": 1, "threads": 1},
    "slurm": {**TINY["slurm"], "tasks_per_node": 2},
}


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str], Path]:
    """``write("usr2")``: the faulty experiment under a unique name (SLURM job names are shared)."""
    suffix = uuid.uuid4().hex[:6]

    def write_one(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": f"{name}-{suffix}", "output_dir": str(tmp_path / "runs"), **FAULTY}))
        return path

    return write_one


def run_dir(path: Path) -> Path:
    return path.parent / "runs" / yaml.safe_load(path.read_text())["name"]


def submit(capsys: pytest.CaptureFixture[str], path: Path) -> Any:
    status, _, err = launch(capsys, path)
    assert status == 0, err
    return job_of(run_dir(path), run_dir(path))


def done(path: Path) -> bool:
    summary = read_summary(run_dir(path))
    return summary is not None and summary["status"] == "done"


def in_second_epoch(path: Path) -> Callable[[], bool]:
    return lambda: logged_step(run_dir(path)) >= STEPS + 2


@pytest.fixture
def reference(slurm_cluster, write, capsys) -> Callable[[], Path]:
    """An uninterrupted job of the faulty config, submitted at once; call it to wait for its run dir."""
    path = write("reference")
    job = submit(capsys, path)

    def finished() -> Path:
        wait_until(lambda: done(path), timeout_s=3 * JOB_TIMEOUT_S, what="reference done", cluster=slurm_cluster, job=job)
        return run_dir(path)

    return finished


@pytest.mark.parametrize("fault", ["preemption (USR2)", "requeue (scontrol requeue)"])
def test_a_run_requeued_mid_epoch_resumes_bit_identical(slurm_cluster, write, reference, capsys, ledger, fault) -> None:
    path = write("requeue")
    job = submit(capsys, path)
    wait_until(in_second_epoch(path), timeout_s=JOB_TIMEOUT_S, what="second epoch", cluster=slurm_cluster, job=job)
    if fault.startswith("preemption"):
        job._interrupt(timeout=True)  # USR2, as SLURM sends it before the time limit: submitit checkpoints and requeues
    else:  # the controller kills the job (SIGTERM, SIGKILL KillWait later) and queues it again
        subprocess.run(["scontrol", "requeue", job.job_id], check=True, capture_output=True, timeout=30)

    # The first life's result file (its RunStopped, for a requeue) would end submitit's wait early: watch the run dir.
    wait_until(lambda: done(path) and len(read_lives(run_dir(path))) == 2, timeout_s=2 * JOB_TIMEOUT_S, what="second life done", cluster=slurm_cluster, job=job)
    first_life = job.stderr().partition("Requeued job")[0] if "Requeued job" in job.stderr() else job.stderr()
    outcome = compare(run_dir(path), reference(), epochs=EPOCHS, keys=VALIDATION)
    ledger.record(fault, survived=True, lost_or_duplicated=outcome.records_off, identical=outcome.identical)
    assert outcome.records_off == 0 and outcome.identical, first_life


def test_scancel_stops_the_job_within_a_step_and_the_run_dir_says_cancelled(slurm_cluster, write, reference, capsys, ledger) -> None:
    path = write("scancel")
    job = submit(capsys, path)
    # Early in the first epoch: the job must not finish in the moment scancel takes to reach it.
    wait_until(lambda: logged_step(run_dir(path)) >= 2, timeout_s=JOB_TIMEOUT_S, what="first steps", cluster=slurm_cluster, job=job)
    cancelled_at = time.time()
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    wait_until(lambda: not squeue("--jobs", job.job_id, "--format=%T"), timeout_s=60, what="job gone", cluster=slurm_cluster, job=job)
    summary = read_summary(run_dir(path))
    assert summary["status"] == "cancelled" and summary["stopped_by"] == "SIGTERM", (summary, job.stderr())
    assert summary["epochs_done"] == 0  # stopped inside the first epoch, not trained on to the end
    # It stopped at the step in progress (well before SIGKILL, KillWait = 2 s later), that step saved.
    lines = [json.loads(line) for line in (run_dir(path) / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["timestamp"] - cancelled_at < 2
    assert checkpoint.load(run_dir(path) / "last.pt")["step"] == lines[-1]["step"]

    # The cancelled run is resubmitted by a relaunch and resumes where it stopped.
    job = submit(capsys, path)
    wait_until(lambda: done(path), timeout_s=JOB_TIMEOUT_S, what="resubmitted run done", cluster=slurm_cluster, job=job)
    outcome = compare(run_dir(path), reference(), epochs=EPOCHS, keys=VALIDATION)
    ledger.record("scancel", survived=summary["status"] == "cancelled", lost_or_duplicated=outcome.records_off, identical=outcome.identical)
    assert outcome.records_off == 0 and outcome.identical


def test_two_launchers_at_the_same_instant_submit_each_run_once(slurm_cluster, write, ledger) -> None:
    path = write("twice")
    command = [sys.executable, "launchers/slurm.py", str(path)]
    repo = Path(__file__).resolve().parents[2]
    launchers = [subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in launchers]
    assert [status for status, _, _ in results] == [0, 0], [err for _, _, err in results]
    actions = sorted(next(line.split()[1] for line in out.splitlines() if line.startswith(path.stem)) for _, out, _ in results)
    assert actions == ["queued", "submitted"], [out for _, out, _ in results]
    name = yaml.safe_load(path.read_text())["name"]
    jobs = squeue("--name", name, "--format=%i")
    ledger.record("two launchers at once", survived=len(jobs) == 1)
    assert len(jobs) == 1
    job_id = json.loads((run_dir(path) / "slurm_job.json").read_text())["job_id"]
    subprocess.run(["scancel", job_id], check=True, timeout=30)
