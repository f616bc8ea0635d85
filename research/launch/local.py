"""Run an experiment's variants on this machine, one after the other, in the same run dirs the SLURM
launcher uses. A variant whose teacher (or fine-tuning source) comes from another experiment gets
that experiment trained first. Finished runs are skipped; unfinished ones resume; a run dir trained
with another config (:mod:`research.launch.run_check`), or a run this machine cannot train
(:mod:`research.launch.preflight`), stops the command before anything starts."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

import torch

from research.config import Run
from research.launch.preflight import preflight
from research.launch.run_check import DONE_ACTION, REPLACE, Verdict, check_not_busy, plan, prepare

log = logging.getLogger(__name__)


def run_locally(runs: Sequence[Run], *, force: bool = False, nproc: int = 1) -> list[Run]:
    """Train every run not finished yet (and what it needs first); returns the runs trained."""
    requested = {run.run_dir for run in runs}
    verdicts = plan(runs, force=force)
    _refuse_live_jobs(verdicts)
    check_not_busy(verdicts)  # rank 0 of each run then holds its lock while it trains
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # what init_distributed picks
    preflight([v.run for v in verdicts if v.action != DONE_ACTION], device=device, world_size=nproc)
    for moved in prepare(verdicts):
        log.info("the old run dir is kept aside in %s", moved)
    trained = []
    for verdict in verdicts:
        run = verdict.run
        if verdict.action == DONE_ACTION:
            if run.run_dir in requested:
                print(f"{run.name}: already finished in {run.run_dir} with this config; skipped (--force trains it again)")
            else:
                print(f"{run.name}: already finished in {run.run_dir}; reused (research train {run.source} --force to train it again)")
            continue
        if nproc > 1:
            _train_ddp(run, nproc)
        else:
            from research.launch.train import train

            train(run)
        trained.append(run)
    return trained


def _refuse_live_jobs(verdicts: Sequence[Verdict]) -> None:
    """A run to replace (--force) whose job is still queued or running is refused, as
    research submit --force refuses it: moved aside under it, the job would die when it starts."""
    replaced = [verdict for verdict in verdicts if verdict.action == REPLACE]
    if replaced:
        from research.launch.submit import active_jobs  # asks the backend only about a run dir that records a job

        active_jobs(replaced)


def _train_ddp(run: Run, nproc: int) -> None:
    """``nproc`` processes on this machine (gloo on CPU), through torch's elastic launcher."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from research.engine.fit import RunStopped
    from research.launch.stop import ELASTIC_SIGNALS, forward_to_workers

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        run_id=uuid.uuid4().hex,
        max_restarts=0,
        start_method="spawn",
        signals_to_handle=ELASTIC_SIGNALS,  # SIGINT and SIGTERM are forward_to_workers'
    )
    with forward_to_workers() as stop:
        results = elastic_launch(config, _ddp_entry)(run)
    stopped = results.get(0)
    if stopped is not None:  # rank 0's line; the exit status of the signal the launcher got, if it got one
        message, status = stopped
        raise RunStopped(message, exit_status=128 + stop.signum if stop.signum is not None else status)


def _ddp_entry(run: Run) -> tuple[str, int] | None:
    """One worker: trains, and returns how a stop request ended it (its line and exit status), or None."""
    from research.engine.fit import RunStopped
    from research.launch.dist import shutdown_distributed
    from research.launch.train import train
    from research.plugins import import_plugins

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import_plugins(run.cfg.plugins)  # a spawned process: the built-ins and the run's plugins, as the loader had them
    try:
        train(run)
    except RunStopped as exc:  # saved: the launcher says so in one line (a raise here prints a traceback)
        return str(exc), exc.exit_status
    finally:
        shutdown_distributed()
    return None
