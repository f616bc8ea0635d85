"""The callable a SLURM job runs: one run, requeued with its state when SLURM preempts it or its time
limit comes.

submitit owns the signal handling (do not install a SIGUSR1 handler of our own: NCCL and submitit both
rely on it). On the signal, submitit calls :meth:`TrainJob.checkpoint` on rank 0 of the live job:
it saves the training state as of the last finished step (unless the signal landed inside an optimizer
update or during an epoch's validation, in which case the last saved checkpoint stands), and returns
the same job for requeueing. The requeued job resumes from ``<run dir>/last.pt``, mid-epoch included.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import submitit

from research.config import Run
from research.engine.fit import Loop
from research.engine.run_dir import read_lives

log = logging.getLogger(__name__)


class TrainJob(submitit.helpers.Checkpointable):
    """Train one run; picklable (holds the frozen run config, never model state)."""

    def __init__(self, run: Run, launch_dir: str) -> None:
        self.run = run
        self.launch_dir = launch_dir  # relative paths in the config are relative to where you launched
        self._loop: Loop | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"run": self.run, "launch_dir": self.launch_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["run"], state["launch_dir"])  # type: ignore[misc]

    def __call__(self) -> dict[str, Any]:
        from research.launch.dist import shutdown_distributed
        from research.launch.train import train

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        _run_from(self.launch_dir, self.run.cfg.plugins)
        try:
            return train(self.run, on_loop=self._attach)
        finally:
            shutdown_distributed()

    def _attach(self, loop: Loop) -> None:
        self._loop = loop

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """Save what was trained, then ask submitit to requeue this run (within ``slurm.max_requeues``)."""
        loop = self._loop
        if loop is not None and _between_steps(loop):
            try:
                loop.save()  # checks first that no step since the last check had a non-finite loss
            except FloatingPointError as exc:
                log.error("%s: preempted after a non-finite loss (%s); not saved, not requeued", self.run.name, exc)
                return None
            log.warning("%s: preempted at epoch %d step %d; state saved", self.run.name, loop.state.epoch, loop.state.step)
        lives = len(read_lives(self.run.run_dir))
        if lives > self.run.cfg.slurm.max_requeues:
            log.error("%s: requeued %d times already (slurm.max_requeues); not requeueing", self.run.name, lives - 1)
            return None
        # submitit now runs `scontrol requeue`, and SLURM answers by sending SIGTERM to every process
        # of the job, scontrol included: it could die before exiting 0, and submitit would record
        # the accepted requeue as a failure. An ignored signal stays ignored in the children we start.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return submitit.helpers.DelayedSubmission(TrainJob(self.run, self.launch_dir))


def _between_steps(loop: Loop) -> bool:
    """Whether the live state is one a resume can continue from: between two steps of an epoch.

    Not inside an optimizer update (half-updated weights), and not at an epoch's end: there the
    epoch is counted done before its validation and its ``metrics.jsonl`` line are written, so a
    resume from that state would never record the epoch. The last saved checkpoint stands instead.
    """
    state = loop.state
    return not state.updating and 0 < state.epoch_step < loop.data.steps_per_epoch


def _run_from(launch_dir: str, plugins: Sequence[str] = ()) -> None:
    """Run in the launch dir, while imports keep coming from the code snapshot the job started in;
    then import the run's plugins (the snapshot holds those of the launch folder, see
    research.launch.slurm.snapshot_extras), as the launcher did before pickling the run."""
    from research.plugins import import_plugins

    snapshot = os.getcwd()
    sys.path[:] = [snapshot if entry in ("", ".") else entry for entry in sys.path]
    os.chdir(launch_dir)
    import_plugins(plugins)
