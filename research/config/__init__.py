"""Experiment configs: typed schema, YAML with ``_base_``, overrides, ablations."""

from research.config.checks import slurm_minutes
from research.config.errors import ConfigError
from research.config.loader import CHECKPOINT, Run, load_run, load_runs
from research.config.schema import ExperimentCfg

__all__ = ["CHECKPOINT", "ConfigError", "ExperimentCfg", "Run", "load_run", "load_runs", "slurm_minutes"]
