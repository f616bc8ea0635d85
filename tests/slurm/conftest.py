"""The ``slurm_cluster`` fixture: a real one-node SLURM cluster for the session.

Tests that submit real jobs take ``slurm_cluster`` and carry
``@pytest.mark.slurm`` (deselect them with ``-m "not slurm"`` on a machine
without SLURM; ``bash .ci/install_slurm.sh`` installs it).

Env knobs: ``RESEARCH_SLURM_DIR`` (cluster directory, default
``/tmp/research-slurm``), ``RESEARCH_SLURM_PORT`` (slurmctld's port, default
6817; slurmd takes the next), ``RESEARCH_SLURM_KEEP=1`` (leave the cluster
running after the session, to reuse it in the next one).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


def _load_cluster_module() -> ModuleType:
    # Loaded by file path under a fixed name, so this conftest works however
    # pytest (or another conftest re-exporting the fixture) imports it.
    name = "research_tests_slurm_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("cluster.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


cluster = _load_cluster_module()


class _DropSacctWarnings(logging.Filter):
    """Drops submitit's "Bypassing sacct error" warnings.

    The test cluster has no slurmdbd, so every job-state poll through ``sacct``
    fails; submitit then falls back on result files, which is all tests need.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "sacct" not in record.getMessage()


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[cluster.ClusterInfo]:
    """Starts the local SLURM cluster (or joins a running one) for the session.

    Sets ``SLURM_CONF`` in ``os.environ`` so that ``sbatch``/``srun``/``scontrol``
    called by submitit, by the code under test and by the jobs themselves find
    the cluster. At the end, stops the daemons if this is the last session
    using a cluster that a test session started (see ``cluster.acquire``).

    Yields:
        A ``ClusterInfo`` with the partition name and a bounded
        ``wait_for_jobs`` (``job.result()`` can hang forever without sacct).
    """
    try:
        info = cluster.acquire()
    except RuntimeError as e:
        pytest.fail(
            f"Could not start the local SLURM cluster: {e}\n"
            'Deselect SLURM tests with -m "not slurm" on machines without SLURM.',
            pytrace=False,
        )
    patch = pytest.MonkeyPatch()
    for key, value in cluster.client_env(info.root).items():
        patch.setenv(key, value)
    submitit_logger = logging.getLogger("submitit")
    sacct_filter = _DropSacctWarnings()
    submitit_logger.addFilter(sacct_filter)
    try:
        yield info
    finally:
        submitit_logger.removeFilter(sacct_filter)
        patch.undo()
        cluster.release(info, keep=os.environ.get("RESEARCH_SLURM_KEEP", "") in {"1", "true", "yes"})
