"""TrainJob.checkpoint, the hook submitit calls on preemption: what it saves and when it requeues."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import submitit

from research.config import load_run
from research.engine.run_dir import start_life
from research.launch.backends.slurm import TrainJob


@pytest.fixture
def job(experiment):
    run = load_run(experiment(slurm={"max_requeues": 2}))
    job = TrainJob(run, launch_dir=".")
    saved = []
    state = SimpleNamespace(epoch=0, step=3, epoch_step=3, updating=False)
    job._loop = SimpleNamespace(state=state, data=SimpleNamespace(steps_per_epoch=10), save=lambda: saved.append(state))
    job.saved = saved
    yield job
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # checkpoint() ignores SIGTERM for the requeue


def _lives(job, count: int) -> None:
    job.run.run_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        start_life(job.run.run_dir, job_id=f"1_{i}")


def test_mid_epoch_state_is_saved_and_the_job_requeued(job) -> None:
    _lives(job, 1)
    resubmission = job.checkpoint()
    assert job.saved == [job._loop.state]
    assert isinstance(resubmission, submitit.helpers.DelayedSubmission)
    assert isinstance(resubmission.function, TrainJob) and resubmission.function.run == job.run
    assert resubmission.function._loop is None  # the live loop is never pickled


@pytest.mark.parametrize(
    ("epoch_step", "updating"),
    [(3, True), (0, False), (10, False)],  # inside an update; at an epoch start; after the last step (validation)
)
def test_inconsistent_states_are_not_saved(job, epoch_step: int, updating: bool) -> None:
    job._loop.state.epoch_step, job._loop.state.updating = epoch_step, updating
    assert job.checkpoint() is not None
    assert job.saved == []


def test_requeues_stop_at_max_requeues(job) -> None:
    _lives(job, 3)  # the first life and two requeues: slurm.max_requeues=2 is used up
    assert job.checkpoint() is None
    assert job.saved == [job._loop.state]  # what was trained is still saved


def test_pickled_job_holds_the_run_only(job) -> None:
    import pickle

    clone = pickle.loads(pickle.dumps(job))
    assert clone.run == job.run and clone._loop is None
