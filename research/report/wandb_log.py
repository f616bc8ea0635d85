"""The report's verdict on W&B: per ablation whose runs log to W&B, a report run in its group with the
variants table (means, intervals, the paper's figure, the verdict), the runs table, the plots, and per
run the delta against the baseline (:mod:`research.tracking.report_run`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from research.config import Run
from research.config.sources import header_comment
from research.report.collect import VariantResult
from research.report.paper import Comparison
from research.report.stats import paired_delta, variant_stats
from research.tracking import DEFAULT_PROJECT, ReportRun, log_report_run

__all__ = ["VARIANT_COLUMNS", "log_reports", "report_run"]

VARIANT_COLUMNS = (
    "variant", "judged on", "n", "mean", "std", "delta", "ci_low", "ci_high", "pairs", "paper delta", "verdict",
)
RUN_COLUMNS = ("run", "variant", "seed", "status", "score", "delta_top1")


def report_run(runs: Sequence[Run], results: Sequence[VariantResult], comparisons: Sequence[Comparison], images: Mapping[str, Path]) -> ReportRun:
    """What the report of one experiment (``runs`` and their ``results``) puts on W&B."""
    first = runs[0]
    stats = variant_stats(results)
    baseline = next((s for s in stats if s.is_baseline), None)
    by_variant = {c.paper.variant: c for c in comparisons if c.experiment == first.experiment and c.paper.variant}
    rows = []
    for entry in stats:
        delta = paired_delta(entry, baseline) if baseline is not None and entry is not baseline else None
        low, high = delta.interval if delta is not None and delta.interval is not None else (None, None)
        paper = by_variant.get(entry.variant)
        rows.append([
            entry.variant, entry.metric, entry.n, entry.mean, entry.std, None if delta is None else delta.mean, low, high,
            None if delta is None else delta.n, None if paper is None else paper.paper.delta, None if paper is None else paper.mark,
        ])
    run_rows = [[r.name, r.variant, r.seed, r.status, r.score, r.delta_top1] for r in results]
    summary = {f"delta_top1/{r.name}": r.delta_top1 for r in results if r.delta_top1 is not None}
    return ReportRun(
        project=first.cfg.logger.get("project") or DEFAULT_PROJECT,
        group=first.experiment,
        notes=header_comment(first.source) if first.source.suffix in (".yaml", ".yml") and first.source.name != "config.yaml" else "",
        tables={"verdicts": (VARIANT_COLUMNS, rows), "runs": (RUN_COLUMNS, run_rows)},
        images=dict(images),
        summary=summary,
    )


def log_reports(
    runs: Sequence[Run], results: Sequence[VariantResult], comparisons: Sequence[Comparison], images: Mapping[str, Path], root: Path
) -> list[str]:
    """A report run per experiment whose runs log to W&B (``logger.name: wandb``); the lines saying where."""
    lines = []
    for experiment in dict.fromkeys(run.experiment for run in runs):
        mine = [run for run in runs if run.experiment == experiment]
        if mine[0].cfg.logger.get("name") != "wandb":
            continue
        group = [r for r in results if r.experiment == experiment]
        line = log_report_run(report_run(mine, group, comparisons, images), root)
        if line:
            lines.append(line)
    return lines
