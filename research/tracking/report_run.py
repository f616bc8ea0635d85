"""A report run: ``research report``'s verdict on W&B, beside the runs it reads.

One W&B run per reported ablation, in the ablation's group with job type ``report``: its tables as
``wandb.Table`` objects, its plots as ``wandb.Image`` objects, and per run of the ablation the delta
against the baseline in the summary (``delta_top1/<run name>``). Offline W&B cannot reopen another
run to add to its summary, so the per-run deltas live in the report run, keyed by run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from research.tracking.wandb_logger import has_api_key, resolve_mode

__all__ = ["ReportRun", "log_report_run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportRun:
    """What a report puts on W&B for one ablation.

    Attributes:
        project: the W&B project its runs log to.
        group: the ablation (the runs' W&B group).
        notes: what the report is about (the experiment file's header comment).
        tables: table name -> (columns, rows).
        images: image name -> PNG file.
        summary: flat summary values (``delta_top1/<run name>``, ...).
    """

    project: str
    group: str
    notes: str = ""
    tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[Any]]]] = field(default_factory=dict)
    images: Mapping[str, Path] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)


def log_report_run(report: ReportRun, root: Path, *, mode: str | None = None) -> str | None:
    """Log ``report`` as one W&B run with files under ``root``; returns a line saying where, or None
    when W&B is not importable or disabled (``WANDB_MODE=disabled``)."""
    try:
        import wandb
    except ImportError:
        return None
    resolved = resolve_mode(mode)
    if resolved == "disabled":
        return None
    if resolved == "online" and not has_api_key():
        resolved = "offline"
    root.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=report.project, group=report.group, job_type="report", name=f"{report.group}/report",
        notes=report.notes or None, tags=["report"], dir=str(root), mode=resolved, reinit="create_new",
    )
    try:
        run.log({name: wandb.Table(columns=list(columns), data=[list(row) for row in rows]) for name, (columns, rows) in report.tables.items()})
        run.log({name: wandb.Image(str(path)) for name, path in report.images.items() if Path(path).exists()})
        run.summary.update(dict(report.summary))
    finally:
        run.finish()
    where = f"offline, under {root} (`wandb sync` uploads it)" if resolved == "offline" else "online"
    return f"W&B: report run {report.group}/report logged ({where})"
