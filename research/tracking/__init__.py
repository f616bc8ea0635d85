"""Experiment tracking: the ``Tracker`` protocol and the ``LOGGERS`` builders ``wandb`` (default),
``jsonl`` and ``none``. Only rank 0 of a distributed run gets a real tracker.
"""

from research.tracking.base import (
    DEFAULT_PROJECT,
    GuardedTracker,
    RunInfo,
    Tracker,
    TrackerWarning,
    flatten_config,
)
from research.tracking.jsonl import JsonlTracker, build_jsonl
from research.tracking.null import NullTracker, build_null
from research.tracking.report_run import ReportRun, log_report_run
from research.tracking.wandb_logger import WandbTracker, build_wandb, has_api_key

__all__ = [
    "DEFAULT_PROJECT",
    "GuardedTracker",
    "JsonlTracker",
    "NullTracker",
    "ReportRun",
    "RunInfo",
    "Tracker",
    "TrackerWarning",
    "WandbTracker",
    "build_jsonl",
    "build_null",
    "build_wandb",
    "flatten_config",
    "has_api_key",
    "log_report_run",
]
