"""``research report``: read the runs of one or more experiments and write the report dir.

The report dir holds ``report.md`` (header, one table per experiment, the plots), ``runs.csv`` (the
same rows, one column per differing config key, for scripts), ``top1_curves.png`` and
``top1_delta.png``. It works at any point of an ablation: runs still training show their best so far,
runs not started show ``-`` and are left out of the plots.
"""

from __future__ import annotations

import datetime
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from research.config import Run
from research.config.sources import header_comment
from research.engine.run_dir import CONFIG, NOT_STARTED, run_status
from research.report.collect import STATUSES, VariantResult, collect, with_deltas
from research.report.dashboard import save_dashboards
from research.report.paper import Comparison, compare, paper_table, read_paper
from research.report.plots import plot_paper_beside_ours, plot_top1_curves, plot_top1_delta
from research.report.rundirs import report_runs
from research.report.table import table, variants_table, write_csv
from research.report.wandb_api import WandbUnavailable, fetch_results
from research.report.wandb_log import log_reports

__all__ = ["CURVES", "CSV", "DELTAS", "MARKDOWN", "PAPER", "merge_results", "write_report"]

log = logging.getLogger(__name__)

MARKDOWN, CSV, CURVES, DELTAS = "report.md", "runs.csv", "top1_curves.png", "top1_delta.png"
PAPER = "paper_vs_ours.png"


def write_report(
    configs: Sequence[Path],
    out_dir: Path | None = None,
    use_wandb: bool = False,
    *,
    overrides: Sequence[str] = (),
    only: Sequence[str] = (),
    wandb_api: Any | None = None,
    echo: bool = True,
    paper: Path | None | bool = True,
    status: Callable[[Path], str] = run_status,
    inference: Callable[[Run], float | None] = lambda run: None,
) -> Path:
    """Write the report of the experiments in ``configs`` and print its tables.

    Args:
        configs: experiment YAML files, or folders of run dirs (``runs/ablate_mixup``); each run is read
            as its run dir's ``config.yaml`` recorded it (a run dir given twice is reported once).
        out_dir: the report dir; default ``reports/<first experiment name>``.
        use_wandb: also read the runs from the W&B API, for runs whose run dirs are not on this
            machine; per run, the source that has seen more epochs wins. Without credentials or
            network the report is made from the run dirs, and its header says so.
        wandb_api: the ``wandb.Api`` to use (tests pass a stand-in); default: a new one.
        overrides: ``dotted.key=value`` items applied to every experiment file, to find its run dirs
            (``output_dir=...``) and to plan the runs that have none yet.
        only: report only these variants of each ablation, and its baseline, which the deltas need
            (as ``launchers/local.py --only`` ran them); all when empty.
        echo: print the tables to stdout.
        paper: put the paper's figures beside ours (Tables 3, 5, 8) for the rows these experiments
            run: True for the package's ``research/report/paper.yaml``, a path for another file,
            False for none.
        status: a run dir's status (the CLI passes one that tells a run still training by its lock).
        inference: a run's inference images/s (the CLI reads the throughput table of ``research
            throughput``), beside the paper's Table 5 throughput; unknown by default.

    Returns:
        The report dir.
    """
    runs = report_runs(configs, overrides, only)
    results = collect(runs, status=status, inference=inference)
    sources = ["run dirs"]
    if use_wandb:
        try:
            results = merge_results(results, fetch_results(runs, api=wandb_api))
            sources.append("W&B API")
        except WandbUnavailable as exc:
            log.warning("W&B API not read (%s); reporting from the run dirs only", exc)
            sources.append(f"W&B API not read: {exc}")
    out = Path(out_dir) if out_dir is not None else Path("reports") / runs[0].experiment
    out.mkdir(parents=True, exist_ok=True)
    plot_top1_curves(results, out / CURVES)
    plot_top1_delta(results, out / DELTAS)
    comparisons = compare(results, read_paper(None if paper is True else paper)) if paper is not False else []
    if comparisons:
        plot_paper_beside_ours(comparisons, out / PAPER)
    write_csv(results, out / CSV)
    markdown = render_markdown(runs, results, sources=sources, comparisons=comparisons)
    (out / MARKDOWN).write_text(markdown, encoding="utf-8")
    images = {name.removesuffix(".png"): out / name for name in (CURVES, DELTAS, PAPER)}
    for line in log_reports(runs, results, comparisons, images, out):  # runs that log to W&B get a report run
        print(line)
    for line in save_dashboards(runs, {run.experiment: header_comment(run.source) for run in runs if run.source.name != CONFIG}):
        print(line)
    if echo:
        for experiment, group in _by_experiment(results).items():
            print(f"{experiment} ({_count(group)})\n{variants_table(group, markdown=False)}\n\n{table(group, markdown=False)}\n")
        for title, group in _by_table(comparisons).items():
            print(f"paper beside ours, {title}\n{paper_table(group, markdown=False)}\n")
    return out


def merge_results(local: Sequence[VariantResult], remote: Sequence[VariantResult]) -> list[VariantResult]:
    """Per run, the run dir's result unless W&B has seen more of the run (more epochs, or any start)."""
    by_dir = {result.run_dir: result for result in remote}
    merged = []
    for result in local:
        other = by_dir.get(result.run_dir)
        ahead = other is not None and (other.epochs_done > result.epochs_done or result.status == NOT_STARTED)
        merged.append(other if ahead else result)
    return with_deltas(merged)


def render_markdown(
    runs: Sequence[Run], results: Sequence[VariantResult], *, sources: Sequence[str], comparisons: Sequence[Comparison] = ()
) -> str:
    """``report.md``: a header (experiments, date, commit, sources), a table per experiment, the paper
    beside ours (when a paper row matches), the plots."""
    groups = _by_experiment(results)
    # the experiment file, or the folder of the run dirs read (their config.yaml holds no file name)
    files = {run.experiment: run.source if run.source.name != CONFIG else Path(run.cfg.output_dir) / run.experiment for run in runs}
    commits = list(dict.fromkeys(r.commit for r in results if r.commit))
    lines = [
        f"# Report: {', '.join(groups)}",
        "",
        f"- **Experiments:** {', '.join(f'{name} (`{_display(files[name])}`)' for name in groups)}",
        f"- **Date:** {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- **Commit:** {', '.join(f'`{c}`' for c in commits) if commits else 'unknown (no run has started)'}",
        f"- **Read from:** {'; '.join(sources)}",
        f"- **Status:** {_count(results)}",
        "",
    ]
    for experiment, group in groups.items():
        run = next(run for run in runs if run.experiment == experiment)
        baseline = next((r.variant for r in group if r.is_baseline and r.variant), None)
        lines += [f"## {experiment}", ""]
        if run.cfg.description:
            lines += [run.cfg.description.strip(), ""]
        details = [f"run dirs: `{_display(Path(run.cfg.output_dir) / run.experiment)}`"]
        if baseline and len(group) > 1:
            details.insert(0, f"baseline: `{baseline}`")
        lines += ["; ".join(details), "", variants_table(group), "", "Every run:", "", table(group), ""]
    lines += [
        "Best top-1 and top-5 are validation accuracies (%) of the epoch with the best top-1 so far (the",
        "weights in `best.pt`; a run that keeps an EMA is judged on the EMA weights' top-1, `val_ema/top1`);",
        "Δ top-1 is that minus the baseline run's of the same seed, in percentage points. Per variant: the",
        "mean ± standard deviation over its seeds (n), and the mean of the paired differences from the",
        "baseline (seed by seed, seeds both have) with its 95% interval (Student t, n - 1 degrees of",
        "freedom). Runs that are not done show their best so far. `runs.csv` holds the runs for scripts.",
        "",
        *_paper_section(comparisons),
        "## Plots",
        "",
        f"![val top-1 per epoch]({CURVES})",
        "",
        f"![top-1 change vs the baseline]({DELTAS})",
        "",
    ]
    if comparisons:
        lines += [f"![the paper's deltas beside ours]({PAPER})", ""]
    return "\n".join(lines)


def _paper_section(comparisons: Sequence[Comparison]) -> list[str]:
    """The paper beside ours: one table per paper table, with what each delta is taken against."""
    if not comparisons:
        return []
    lines = [
        "## The paper beside ours",
        "",
        "Touvron et al. 2021 (ImageNet-1k, 300 epochs; the figures and where each comes from are in",
        "`research/report/paper.yaml`). Each row's Δ is against the table's reference row, ours against",
        "our run of that row, paired by seed, with its 95% interval. The paper's direction: ✓ when our",
        "interval excludes 0 on the paper's side, ✗ when it excludes 0 on the other side, within noise",
        "when it contains 0, n = 1 when one seed gives no interval (no verdict).",
        "Our scale (model, data, budget) is not the paper's: compare directions, not sizes.",
        "",
    ]
    for title, group in _by_table(comparisons).items():
        references = dict.fromkeys(
            f"{c.paper.reference_row} = {c.paper.reference_value:g}" for c in group if c.paper.variant
        )
        lines += [f"### {title}", ""]
        if references:
            lines += [f"Reference row: {'; '.join(references)}; ours: the `{group[0].paper.reference_variant}` run.", ""]
        marks = Counter(c.mark for c in group if c.mark != "-")
        summary = ", ".join(f"{mark}: {count}" for mark, count in marks.items()) or "no row has both deltas yet"
        lines += [paper_table(group), "", f"Verdicts: {summary}.", ""]
    return lines


def _by_table(comparisons: Sequence[Comparison]) -> dict[str, list[Comparison]]:
    groups: dict[str, list[Comparison]] = {}
    for comparison in comparisons:
        groups.setdefault(comparison.paper.title, []).append(comparison)
    return groups


def _by_experiment(results: Sequence[VariantResult]) -> dict[str, list[VariantResult]]:
    groups: dict[str, list[VariantResult]] = {}
    for result in results:
        groups.setdefault(result.experiment, []).append(result)
    return groups


def _count(results: Sequence[VariantResult]) -> str:
    """``3 runs: 1 done, 1 running, 1 not started``."""
    counts = Counter(r.status for r in results)
    order = [*STATUSES, *sorted(set(counts) - set(STATUSES))]  # training, stopped, ... after the engine's
    detail = ", ".join(f"{counts[status]} {status}" for status in order if counts[status])
    return f"{len(results)} run{'s' if len(results) != 1 else ''}: {detail}"


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it is below it, else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
