"""SLURM through submitit: the built-in launcher backend (``resources.backend: slurm``).

A group of runs becomes one job array whose tasks run :class:`TrainJob`; its ``#SBATCH`` lines come
from the run's ``resources:`` and ``slurm:`` sections. submitit owns the signal handling (do not
install a SIGUSR1 handler of our own: NCCL and submitit both rely on it). On the signal, submitit
calls :meth:`TrainJob.checkpoint` on rank 0 of the live job, which saves the training state and
returns the job for requeueing; the requeued job resumes from ``<run dir>/last.pt``, mid-epoch included.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import submitit

from research.config import ConfigError, ExperimentCfg, Run, slurm_minutes
from research.engine.run_dir import read_lives
from research.launch.backends.base import Backend, Group
from research.registry import BACKENDS

if TYPE_CHECKING:
    from research.engine.fit import Loop

log = logging.getLogger(__name__)

# Seconds squeue may take: a controller that answers at all answers within seconds, and one that
# does not leaves a job's state unknown (see SlurmBackend.job_state).
SQUEUE_TIMEOUT_S = 30
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD", "RESIZING"}


def executor_parameters(cfg: ExperimentCfg, job_name: str) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters (sbatch's vocabulary) for a run's ``resources:`` and ``slurm:``."""
    slurm, res = cfg.slurm, cfg.resources
    gpus = res.gpus_per_node
    if gpus and res.tasks_per_node not in (None, gpus):
        raise ConfigError(
            f"resources.tasks_per_node={res.tasks_per_node} but resources.gpus_per_node={gpus}: DDP runs one task per GPU; "
            "leave tasks_per_node unset on GPU nodes"
        )
    if res.gpu_type and not gpus:
        raise ConfigError(f"resources.gpu_type={res.gpu_type} asks for GPUs of that type: set resources.gpus_per_node (1 or more)")
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": slurm_minutes(res.time),
        "nodes": res.nodes,
        "ntasks_per_node": gpus or res.tasks_per_node or 1,
        "cpus_per_task": res.cpus_per_task,
        "array_parallelism": slurm.array_parallelism,
        "partition": slurm.partition,
        "account": slurm.account,
        "qos": slurm.qos,
        "constraint": slurm.constraint,
        # sbatch --gpus-per-node=h200:1 asks for that GPU type
        "gpus_per_node": (f"{res.gpu_type}:{gpus}" if res.gpu_type else gpus) or None,
        "mem": f"{int(res.mem_gb * 1024)}MB" if res.mem_gb else None,
        "setup": list(slurm.setup) or None,
        # a student whose teacher failed is cancelled rather than left pending forever; slurm.extra can say otherwise
        "additional_parameters": {"kill_on_invalid_dep": "yes", **slurm.extra},
    }
    return {key: value for key, value in params.items() if value is not None}


@BACKENDS.register("slurm")
class SlurmBackend(Backend):
    """Job arrays through submitit's ``SlurmExecutor``; job states from ``squeue`` and ``scontrol``."""

    def check_client(self) -> None:
        """sbatch is here, and ``SLURM_CONF``, when set, names a file (else sbatch retries for a minute)."""
        if shutil.which("sbatch") is None:
            raise ConfigError(
                "no SLURM here (sbatch not found): use --dry-run to see the jobs, or launchers/local.py to run them on this machine"
            )
        conf = os.environ.get("SLURM_CONF")
        if conf and not Path(conf).is_file():
            raise ConfigError(
                f"SLURM_CONF={conf} is not a file: point SLURM_CONF at your cluster's slurm.conf (python tests/slurm/cluster.py "
                "start prints the local test cluster's) or unset it, or use --dry-run to see the jobs without submitting"
            )

    def options(self, run: Run) -> dict[str, Any]:
        return {"sbatch": executor_parameters(run.cfg, run.experiment), "max_requeues": run.cfg.slurm.max_requeues}

    def header(self, group: Group) -> str:
        """The ``#SBATCH`` lines submitit would write (works without SLURM)."""
        from submitit.slurm.slurm import _make_sbatch_string

        command = "<python -m submitit.core._submit>"
        text = _make_sbatch_string(command=command, folder=group.folder / "%j", map_count=len(group.runs), **_sbatch(group))
        return "\n".join(line for line in text.splitlines() if line.startswith("#SBATCH"))

    def submit(self, group: Group) -> list[str]:
        """One job array; sbatch's refusal becomes one line (submitit's copy of it is muted)."""
        executor = submitit.SlurmExecutor(folder=group.folder / "%j", max_num_timeout=group.options["max_requeues"])
        executor.update_parameters(**_sbatch(group))
        muted = io.StringIO()  # submitit prints sbatch's stderr before raising with the same text
        # sbatch passes our environment on to the job (for the submission only: launch may be called from
        # a library), which runs with the umask of SLURM_UMASK (else sbatch's own: the submission's 077).
        variables = {**group.env, "SLURM_UMASK": f"{group.umask:04o}"}
        try:
            with mock.patch.dict(os.environ, variables), contextlib.redirect_stderr(muted), executor.batch():
                jobs = [executor.submit(TrainJob(run, str(group.launch_dir))) for run in group.runs]
        except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as exc:
            raise _refusal(exc, group.runs) from None
        return [job.job_id for job in jobs]

    def job_state(self, job_id: str) -> str | None:
        """The job's state from squeue while it is active (None once it has left the queue).

        A controller that does not answer (down, overloaded, no configuration) leaves the state unknown,
        and unknown is not "no job": a launcher that took it so would submit the run a second time or
        move aside the dir of a job still queued. Raises a ConfigError then.
        """
        command = ["squeue", "--noheader", "--format=%T", "--jobs", job_id]
        unknown = f"cannot tell whether SLURM job {job_id} is still queued or running"
        fix = "nothing was submitted or moved; check the controller (scontrol ping) and SLURM_CONF, then launch again"
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=SQUEUE_TIMEOUT_S)
        except FileNotFoundError:
            raise ConfigError(f"{unknown}: squeue is not installed here; {fix}, or scancel {job_id} on the cluster") from None
        except subprocess.TimeoutExpired:
            raise ConfigError(f"{unknown}: the SLURM controller did not answer squeue within {SQUEUE_TIMEOUT_S} s; {fix}") from None
        if result.returncode == 0:
            states = result.stdout.split()
            return states[0] if states and states[0] in ACTIVE_STATES else None
        said = result.stderr.strip().splitlines()
        if said and "Invalid job id" in said[-1]:  # the controller no longer knows the job: it left the queue
            return None
        raise ConfigError(f"{unknown}: squeue failed ({said[-1] if said else f'exit {result.returncode}'}); {fix}")

    def current_job(self) -> str | None:
        """``123_4`` for task 4 of array job 123 (as squeue and slurm_job.json name it), else the job id."""
        array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")

    def stop_state(self) -> str | None:
        """This job's state as the controller sees it while the job stops (None outside SLURM).

        ``scancel`` and ``scontrol requeue`` both show COMPLETING while the job's processes stop; a
        requeue has already counted a restart, which tells the two apart: CANCELLED for a job that will
        not come back, REQUEUED for one that will, else the controller's word (TIMEOUT, PREEMPTED, ...).
        """
        job_id = os.environ.get("SLURM_JOB_ID")
        if not job_id:
            return None
        try:
            result = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        state, restarts = re.search(r"JobState=(\S+)", result.stdout), re.search(r"Restarts=(\d+)", result.stdout)
        if state is None:
            return None
        if restarts and int(restarts[1]) > int(os.environ.get("SLURM_RESTART_COUNT") or 0):
            return "REQUEUED"
        return "CANCELLED" if state[1] in ("COMPLETING", "CANCELLED") else state[1]


def _sbatch(group: Group) -> dict[str, Any]:
    """The group's sbatch parameters, with its ``afterok`` dependency."""
    after = {"dependency": "afterok:" + ":".join(group.depends_on)} if group.depends_on else {}
    return {**group.options["sbatch"], **after}


# What sbatch says when no controller answers (no slurm.conf, no DNS SRV record, slurmctld down):
# the fix is on this machine, not in the experiment's slurm: section.
_NO_CONTROLLER = (
    "Unable to contact slurm controller",
    "Could not establish a configuration source",
    "s_p_parse_file: unable to read",
    "Zero Bytes were transmitted or received",
)


def _refusal(exc: Exception, runs: Sequence[Run]) -> ConfigError:
    """sbatch's refusal as one line: the controller unreachable (fix this machine), or the job refused."""
    detail = getattr(exc, "stderr", None) or getattr(exc, "output", None) or str(exc)
    detail = (detail.decode() if isinstance(detail, bytes) else str(detail)).strip()
    said = next((line for line in detail.splitlines() if any(symptom in line for symptom in _NO_CONTROLLER)), None)
    if said is not None:
        return ConfigError(
            f"sbatch cannot reach a SLURM controller ({said.strip()}): set SLURM_CONF to your cluster's "
            "slurm.conf, start the cluster (python tests/slurm/cluster.py start prints the SLURM_CONF of the "
            "local test cluster), or use --dry-run to see the jobs without submitting"
        )
    names = ", ".join(run.name for run in runs)
    return ConfigError(f"sbatch refused the job for {names}: {'; '.join(detail.splitlines())}")


class TrainJob(submitit.helpers.Checkpointable):
    """Train one run; picklable (holds the frozen run config, never model state)."""

    _loop: Loop | None = None  # the live loop, once train has built it; never pickled

    def __init__(self, run: Run, launch_dir: str) -> None:
        self.run = run
        self.launch_dir = launch_dir  # relative paths in the config are relative to where you launched

    def __getstate__(self) -> dict[str, Any]:
        return {"run": self.run, "launch_dir": self.launch_dir}

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
        # Save only a state a resume can continue from: between two steps of an epoch. Not inside an
        # optimizer update (half-updated weights), and not at an epoch's end: there the epoch is counted
        # done before its validation and its ``metrics.jsonl`` line are written, so a resume from that
        # state would never record the epoch. The last saved checkpoint stands instead.
        if loop is not None and not loop.state.updating and 0 < loop.state.epoch_step < loop.data.steps_per_epoch:
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


def _run_from(launch_dir: str, plugins: Sequence[str] = ()) -> None:
    """Run in the launch dir, while imports keep coming from the code snapshot the job started in;
    then import the run's plugins (the snapshot holds those of the launch folder, see
    research.launch.submit.snapshot_extras), as the launcher did before pickling the run."""
    from research.plugins import import_plugins

    snapshot = os.getcwd()
    sys.path[:] = [snapshot if entry in ("", ".") else entry for entry in sys.path]
    os.chdir(launch_dir)
    import_plugins(plugins)
