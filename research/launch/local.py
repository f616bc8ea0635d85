"""Run an experiment's variants on this machine, one after the other, in the same run dirs the SLURM
launcher uses. A variant whose teacher (or fine-tuning source) comes from another experiment gets
that experiment trained first. Finished runs are skipped; unfinished ones resume."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from research.config import Run
from research.engine.run_dir import is_done

log = logging.getLogger(__name__)


def with_prerequisites(runs: Iterable[Run]) -> list[Run]:
    """``runs`` with the runs they depend on placed before them, each run once (by run dir)."""
    ordered: dict[Path, Run] = {}

    def visit(run: Run) -> None:
        for needed in run.prerequisites():
            visit(needed)
        ordered.setdefault(run.run_dir, run)

    for run in runs:
        visit(run)
    return list(ordered.values())


def set_aside(run_dir: Path) -> Path:
    """Move a finished run dir out of the way (``--force``): nothing is deleted."""
    target = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(run_dir, target)
    return target


def run_locally(runs: Sequence[Run], *, force: bool = False, nproc: int = 1) -> list[Run]:
    """Train every run not finished yet (and its prerequisites); returns the runs trained."""
    trained = []
    requested = {run.run_dir for run in runs}
    for run in with_prerequisites(runs):
        if is_done(run.run_dir):
            if force and run.run_dir in requested:
                log.info("%s: finished before; --force: moved to %s", run.name, set_aside(run.run_dir))
            else:
                # --force names the requested runs only: a finished teacher (or fine-tuning source) is reused
                again = "skipped (use --force" if run.run_dir in requested else f"reused (research train {run.source} --force"
                print(f"{run.name}: already finished in {run.run_dir}; {again} to train it again)")
                continue
        if nproc > 1:
            _train_ddp(run, nproc)
        else:
            from research.launch.train import train

            train(run)
        trained.append(run)
    return trained


def _train_ddp(run: Run, nproc: int) -> None:
    """``nproc`` processes on this machine (gloo on CPU), through torch's elastic launcher."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        run_id=uuid.uuid4().hex,
        max_restarts=0,
        start_method="spawn",
    )
    elastic_launch(config, _ddp_entry)(run)


def _ddp_entry(run: Run) -> None:
    from research.launch.dist import shutdown_distributed
    from research.launch.train import train
    from research.plugins import import_plugins

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import_plugins(run.cfg.plugins)  # a spawned process: the built-ins and the run's plugins, as the loader had them
    try:
        train(run)
    finally:
        shutdown_distributed()
