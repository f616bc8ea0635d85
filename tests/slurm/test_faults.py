"""Faults injected into SLURM jobs on the real one-node cluster: preemption (USR2) and a requeue by
the controller mid-epoch, ``scancel``, and two launchers started at the same instant. Each faulted run
of two DDP ranks is compared with an uninterrupted job of the same config: no epoch record lost or
written twice, and the resumed run ends bit-identical to it (tests/faults/ledger.py counts them).

Around a pending job: the controller stopped or squeue failing while a launcher asks about it, a
group member replacing its pickle, and ``research train --force`` on its run: nothing may move."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import submitit
import yaml
from faults.harness import VALIDATION, compare, logged_step
from test_launcher import JOB_TIMEOUT_S, TINY, job_of, launch, squeue, wait_until

from research.engine import checkpoint
from research.engine.run_dir import read_lives, read_summary
from research.launch.backends import slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

NOBODY = 65534  # the uid of a group member who is not the owner
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
    config = yaml.safe_load(path.read_text())
    return Path(config["output_dir"]) / config["name"]


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


# --- faults around a pending job: the controller unreachable, its files, a local --force ----------


@pytest.fixture
def held(slurm_cluster, tmp_path: Path, capsys) -> Iterator[Callable[..., tuple[Path, str]]]:
    """``held("name")``: a tiny experiment submitted with ``--hold`` (pending until released); returns
    its file and job id. Every job it submitted is cancelled at the end."""
    jobs: list[str] = []
    suffix = uuid.uuid4().hex[:6]

    def submit_held(name: str, output_dir: Path | None = None) -> tuple[Path, str]:
        path = tmp_path / f"{name}.yaml"
        config = {"name": f"{name}-{suffix}", "output_dir": str(output_dir or tmp_path / "runs"), **TINY}
        path.write_text(yaml.safe_dump(config))
        status, _, err = launch(capsys, path, "slurm.extra={hold: true}")
        assert status == 0, err
        jobs.append(json.loads((run_dir(path) / "slurm_job.json").read_text())["job_id"])
        return path, jobs[-1]

    yield submit_held
    if jobs:
        subprocess.run(["scancel", *jobs], check=False, timeout=30)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the output dir) with its content: what a refused launch must not change."""
    return {str(file.relative_to(folder)): file.read_bytes() for file in sorted(folder.rglob("*")) if file.is_file()}


@pytest.fixture
def fake_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """``fake_squeue(script)``: an ``squeue`` running that shell script ahead of the real one on the PATH
    (sbatch and the rest stay real)."""

    def install(script: str) -> None:
        folder = tmp_path / "fake-bin"
        folder.mkdir(exist_ok=True)
        (folder / "squeue").write_text(f"#!/bin/sh\n{script}\n")
        (folder / "squeue").chmod(0o755)
        monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")

    return install


UNREACHABLE = {
    "slurmctld stopped during --force": ("stopped", True),
    "slurmctld stopped during a relaunch": ("stopped", False),
    "squeue times out during a relaunch": ("echo 'slurm_load_jobs error: Socket timed out on send/recv operation' >&2; exit 1", False),
    "squeue fails during --force": ("echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2; exit 1", True),
    "squeue hangs during --force": ("sleep 60", True),
}


@pytest.mark.parametrize("fault", list(UNREACHABLE))
def test_a_job_state_squeue_cannot_tell_refuses_the_launch_and_moves_nothing(
    slurm_cluster, held, fake_squeue, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, ledger, fault: str
) -> None:
    """An unknown state is not "no job": --force moved the run dir aside (then exited 2), and a
    relaunch submitted a duplicate whose id replaced the live job's in slurm_job.json."""
    path, job_id = held("unknown")
    before = tree(tmp_path / "runs")
    squeue_fault, force = UNREACHABLE[fault]
    monkeypatch.setattr(slurm, "SQUEUE_TIMEOUT_S", 3)
    if squeue_fault == "stopped":
        with slurm_cluster.controller_stopped():
            status, out, err = launch(capsys, path, *(["--force"] if force else []))
    else:
        fake_squeue(squeue_fault)
        status, out, err = launch(capsys, path, *(["--force"] if force else []))
        monkeypatch.undo()  # the real squeue again

    lines = err.strip().splitlines()
    held_alone = squeue("--name", yaml.safe_load(path.read_text())["name"], "--format=%i") == [job_id]
    untouched = tree(tmp_path / "runs") == before and not list((tmp_path / "runs").glob("*.replaced-*"))
    ledger.record(fault, survived=status == 2 and held_alone and untouched)
    assert status == 2 and out == "" and len(lines) == 1, err
    assert f"cannot tell whether SLURM job {job_id} is still queued" in lines[0] and "controller" in lines[0]
    assert held_alone and untouched


def test_research_train_force_refuses_a_run_whose_slurm_job_is_pending(held, tmp_path: Path, capsys, ledger) -> None:
    """Moved aside under its pending job, the run would die when the job starts."""
    from research.cli import main

    path, job_id = held("pending")
    before = tree(tmp_path / "runs")
    status = main(["train", str(path), "--force"])
    err = capsys.readouterr().err
    untouched = tree(tmp_path / "runs") == before and not list((tmp_path / "runs").glob("*.replaced-*"))
    ledger.record("research train --force on a pending job", survived=status == 2 and untouched)
    (line,) = err.strip().splitlines()
    assert status == 2 and f"job {job_id}, PENDING" in line and f"scancel {job_id} first" in line, line
    assert untouched


def test_a_pending_jobs_submission_files_are_the_owners_only(slurm_cluster, held, ledger) -> None:
    """Under umask 002 in a folder the group may write to: submitit's pickle (unpickled when the job
    starts), the batch script and the job's folder are the owner's only, so a group member cannot
    replace them; the job itself still writes with the user's umask."""
    shared = Path(tempfile.mkdtemp(prefix="research-shared-"))  # not under pytest's tmp_path: that is 0700
    shared.chmod(0o775)
    umask = os.umask(0o002)
    try:
        path, job_id = held("owner", output_dir=shared / "runs")
    finally:
        os.umask(umask)
    try:
        slurm_dir = run_dir(path) / ".slurm"
        pickle, script = slurm_dir / job_id / f"{job_id}_submitted.pkl", slurm_dir / job_id / f"{job_id}_submission.sh"
        modes = {file.name: oct(file.stat().st_mode & 0o777) for file in (slurm_dir, slurm_dir / job_id, pickle, script)}
        assert modes == {".slurm": "0o700", job_id: "0o700", pickle.name: "0o600", script.name: "0o600"}
        # A member of the owner's group (uid nobody, gid of the files) tries to put its own pickle there.
        attack = f"import os, pathlib; pathlib.Path({str(pickle)!r}).write_bytes(b'x'); os.replace({str(pickle)!r}, {str(pickle)!r})"
        tried = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={os.getgid()}", "--clear-groups", sys.executable, "-c", attack],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert tried.returncode != 0 and "PermissionError" in tried.stderr, tried.stderr
        subprocess.run(["scontrol", "release", job_id], check=True, capture_output=True, timeout=30)
        job = submitit.SlurmJob(folder=slurm_dir / "%j", job_id=job_id)
        wait_until(lambda: done(path), timeout_s=JOB_TIMEOUT_S, what="released job done", cluster=slurm_cluster, job=job)
        ledger.record("a pending job's pickle replaced by a group member", survived=done(path))
        # SLURM_UMASK: the job's own files follow the user's umask (002), not the submission's 077
        assert (run_dir(path) / "summary.json").stat().st_mode & 0o777 == 0o664
    finally:
        shutil.rmtree(shared, ignore_errors=True)
