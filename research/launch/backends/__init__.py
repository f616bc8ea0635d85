"""Launcher backends: where ``research submit`` (``launchers/slurm.py``) sends an experiment's runs.

A backend is a :class:`Backend` registered in ``research.registry.BACKENDS``; ``resources.backend``
(``--backend``) picks one, SLURM through submitit by default. It maps the generic ``resources:``
section (and a section of its own options, if it has one: ``slurm:``) to its submission; the
pipeline in research.launch.submit does the rest. Importing this package registers the built-ins.
"""

from research.launch.backends import slurm
from research.launch.backends.base import Backend, Group, backend_of

__all__ = ["Backend", "Group", "backend_of", "slurm"]
