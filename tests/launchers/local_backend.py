"""A second launcher backend, for the tests: each run of a group trains in a subprocess of this
machine, one after the other, and ``submit`` returns when they are done (so a teacher has finished
before its students are submitted). Importing this module registers it as ``subprocess``.

This file is the whole backend: the registry entry and the :class:`Backend` methods a scheduler
needs. It has no options section of its own (``resources:`` is all it reads).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import uuid
from typing import Any

from research.config import ConfigError, Run
from research.launch.backends import Backend, Group
from research.registry import BACKENDS

JOB_VARIABLE = "RESEARCH_SUBPROCESS_JOB"  # the child's job id, as SLURM_JOB_ID is a SLURM job's


@BACKENDS.register("subprocess")
class SubprocessBackend(Backend):
    def options(self, run: Run) -> dict[str, Any]:
        return {"processes": run.cfg.resources.processes()}

    def header(self, group: Group) -> str:
        after = f" after {', '.join(group.depends_on)}" if group.depends_on else ""
        return f"# {len(group.runs)} subprocess(es) of {sys.executable}{after}"

    def submit(self, group: Group) -> list[str]:
        job_ids = []
        for run in group.runs:
            job_id = f"sub-{uuid.uuid4().hex[:8]}"
            pickled = group.folder / f"{job_id}.pkl"
            pickled.write_bytes(pickle.dumps(run))
            env = {**os.environ, **group.env, JOB_VARIABLE: job_id}
            done = subprocess.run([sys.executable, __file__, str(pickled)], cwd=group.launch_dir, env=env, check=False)
            if done.returncode != 0:
                raise ConfigError(f"{run.name}: its subprocess exited {done.returncode}")
            job_ids.append(job_id)
        return job_ids

    def current_job(self) -> str | None:
        return os.environ.get(JOB_VARIABLE)


if __name__ == "__main__":  # the job: python local_backend.py RUN.pkl (registered above, as __main__)
    from research.launch.train import train
    from research.plugins import import_plugins

    with open(sys.argv[1], "rb") as file:
        job_run: Run = pickle.load(file)
    import_plugins(job_run.cfg.plugins)
    train(job_run)
