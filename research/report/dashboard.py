"""A saved W&B workspace per ablation, built with ``wandb-workspaces`` (W&B's library for workspaces as code).

The workspace shows the ablation's group only, its runs grouped by ``variant`` (a config key without
the seed, so a variant's seeds pool into one line with its spread): the verdict table that
``research report`` logs (:mod:`research.report.wandb_log`), val top-1 per variant and the loss parts,
with the baseline named. It is saved only when W&B is reachable (an API key); offline, the report
says so in one line and writes nothing remote.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from research.config import Run
from research.tracking import DEFAULT_PROJECT, has_api_key

__all__ = ["build_workspace", "save_dashboards"]


def build_workspace(*, entity: str, project: str, experiment: str, baseline: str, notes: str = "") -> Any:
    """The workspace of one ablation (a ``wandb_workspaces.workspaces.Workspace``), not saved."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    pooled: dict[str, Any] = {"groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"}  # seeds: mean and spread
    return ws.Workspace(
        entity=entity,
        project=project,
        name=f"{experiment}: verdict",
        runset_settings=ws.RunsetSettings(filters=ws.And(ws.Metric("Group") == experiment), groupby=[ws.Config("variant")]),
        sections=[
            ws.Section(
                name="Verdict",
                is_open=True,
                panels=[
                    wr.MarkdownPanel(markdown=f"**{experiment}**, baseline: `{baseline}`. Runs grouped by variant, seeds pooled.\n\n{notes}"),
                    wr.WeavePanelSummaryTable(table_name="verdicts"),
                ],
            ),
            ws.Section(
                name="Top-1 per variant",
                is_open=True,
                panels=[
                    wr.LinePlot(title="val/top1 per variant (mean ± std over seeds)", y=["val/top1"], **pooled),
                    wr.BarPlot(title=f"best top-1 per variant (baseline: {baseline})", metrics=["best_top1"], **pooled),
                ],
            ),
            ws.Section(
                name="Losses",
                panels=[
                    wr.LinePlot(title="train/loss per variant", y=["train/loss"], **pooled),
                    wr.LinePlot(title="loss parts", metric_regex="^train/loss/.*", **pooled),
                ],
            ),
        ],
    )


def save_dashboards(runs: Sequence[Run], notes: dict[str, str]) -> list[str]:
    """Save the workspace of every ablation in ``runs`` that logs to W&B; the lines to print."""
    ablations = {run.experiment: run for run in runs if run.cfg.logger.get("name") == "wandb"}
    if not ablations:
        return []
    if not has_api_key():
        return ["W&B dashboard: not saved (W&B not reachable: no API key; offline runs are uploaded with `wandb sync`)"]
    import wandb

    lines = []
    for experiment, run in ablations.items():
        project = run.cfg.logger.get("project") or DEFAULT_PROJECT
        entity = run.cfg.logger.get("entity") or wandb.Api().default_entity
        baseline = next((r.variant for r in runs if r.experiment == experiment and r.is_baseline), "") or experiment
        workspace = build_workspace(entity=entity, project=project, experiment=experiment, baseline=baseline, notes=notes.get(experiment, ""))
        workspace.save()
        lines.append(f"W&B dashboard for {experiment}: {workspace.url}")
    return lines
