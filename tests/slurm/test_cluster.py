"""End-to-end checks of the local SLURM cluster through submitit.

These are the two SLURM behaviours the launcher relies on: job arrays of
multi-task jobs (one array element per run, one task per rank), and
preemption handled by submitit's checkpoint-and-``scontrol requeue``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The job unpickles our callables in a process where this test module is not
# importable (pytest put its folder on sys.path, sbatch does not): ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _rank_report(element: int) -> tuple[int, int, int, str]:
    env = submitit.JobEnvironment()
    return element, env.global_rank, env.num_tasks, env.job_id


class _CountLives(submitit.helpers.Checkpointable):
    """Appends one line per life to a file, then waits to be preempted in its first life.

    ``progress`` is set before the preemption, so reading it in the second life
    shows that submitit's checkpoint pickled the live object, not the original.
    """

    def __init__(self) -> None:
        self.progress = 0

    def __call__(self, lives_file: str) -> tuple[int, int]:
        path = Path(lives_file)
        with path.open("a") as f:
            f.write(f"restart_count={os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
        lives = len(path.read_text().splitlines())
        if lives == 1:
            self.progress = 42
            # The test preempts us now; submitit's USR2 handler checkpoints and
            # requeues. Bounded so a broken requeue fails instead of hanging.
            time.sleep(120)
        return lives, self.progress

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        # `scontrol requeue` has SLURM SIGTERM the job's processes, scontrol included; ignoring it
        # (inherited by scontrol) keeps the accepted requeue from looking failed, as TrainJob does.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return super().checkpoint(*args, **kwargs)


def _executor(folder: Path, partition: str, **params: int) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder)
    assert executor.cluster == "slurm", "submitit did not pick SLURM: is sbatch on PATH?"
    executor.update_parameters(slurm_partition=partition, nodes=1, cpus_per_task=1, mem_gb=1, timeout_min=5, **params)
    return executor


def test_job_array_runs_every_rank_of_every_element(slurm_cluster, tmp_path: Path) -> None:
    executor = _executor(tmp_path / "logs", slurm_cluster.partition, tasks_per_node=2)
    jobs = executor.map_array(_rank_report, [10, 11, 12])  # one array, 3 elements
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1, "expected one array job"

    slurm_cluster.wait_for_jobs(jobs, timeout_s=60)

    for element, job in zip([10, 11, 12], jobs, strict=True):
        reports = job.results()  # one result per task
        assert sorted((e, rank, n) for e, rank, n, _ in reports) == [(element, 0, 2), (element, 1, 2)]
        assert {job_id for *_, job_id in reports} == {job.job_id}


def test_preempted_checkpointable_is_requeued_and_resumes(slurm_cluster, tmp_path: Path) -> None:
    lives_file = tmp_path / "lives.txt"
    executor = _executor(tmp_path / "logs", slurm_cluster.partition, tasks_per_node=1)
    job = executor.submit(_CountLives(), str(lives_file))

    deadline = time.monotonic() + 30
    while not lives_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lives_file.exists(), f"first life never started:\n{job.stderr()}\n{slurm_cluster.log_tails()}"
    # Preemption as submitit's own tests simulate it: SIGTERM, then USR2 to the job's steps.
    job._interrupt()

    # A requeued job waits for its old credential to expire (cred_expire, 10 s here).
    slurm_cluster.wait_for_jobs([job], timeout_s=45)
    assert job.result() == (2, 42)
    assert lives_file.read_text().splitlines() == ["restart_count=0", "restart_count=1"]
