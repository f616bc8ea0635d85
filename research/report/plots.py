"""The report's figures: val top-1 per epoch of every variant, and each variant's top-1 change vs the baseline.

Figures are built on ``matplotlib.figure.Figure`` and saved through the Agg canvas, never through
``pyplot``: no global figure state and no GUI backend, so the report works on a headless login node
and leaves the backend of a notebook that calls it alone.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from research.config.expand import format_value, without_seed
from research.engine.run_dir import DONE
from research.report.collect import VariantResult
from research.report.paper import Comparison
from research.report.stats import paired_delta, variant_stats

__all__ = ["delta_label", "paper_figure", "plot_paper_beside_ours", "plot_top1_curves", "plot_top1_delta"]

_DPI = 120
_GAIN, _LOSS = "#2a9d55", "#c8553d"  # bar colours: better / worse than the baseline


def plot_top1_curves(results: Sequence[VariantResult], path: Path) -> Path:
    """Val top-1 vs epoch, one panel per experiment and one line per variant that has evaluated an epoch.

    The baseline is drawn thicker; runs that are not done (still running, failed) are dashed, since
    their curve may still change. Runs without an evaluated epoch are left out.
    """
    experiments = list(dict.fromkeys(r.experiment for r in results)) or [""]
    columns = min(len(experiments), 2)
    rows = math.ceil(len(experiments) / columns)
    figure = Figure(figsize=(6.4 * columns, 4.2 * rows), dpi=_DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, experiment in zip(axes, experiments):
        group = [r for r in results if r.experiment == experiment]
        curves = [r for r in group if r.curve]
        for index, result in enumerate(curves):
            epochs, top1 = zip(*result.curve)
            ax.plot(
                epochs,
                top1,
                color=f"C{index % 10}",
                linewidth=2.6 if result.is_baseline else 1.5,
                linestyle="-" if result.status == DONE else "--",
                marker="o" if len(epochs) <= 30 else None,
                markersize=3,
                label=_curve_label(result, ablation=len(group) > 1),
            )
        ax.set_title(experiment)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val top-1 (%)")
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize="small")
        else:
            _empty(ax, "no evaluated epoch yet")
    for ax in axes[len(experiments) :]:
        ax.set_visible(False)
    return _save(figure, path)


def plot_top1_delta(results: Sequence[VariantResult], path: Path) -> Path:
    """Each variant's score minus its baseline's, paired by seed: the mean difference as a bar with its
    95% interval (seeds >= 2), every seed's difference as a dot; sorted, largest gain on top.

    Bars of variants with a run that is not done are hatched and say so: the number is their best so far.
    """
    sizes = Counter(r.experiment for r in results)
    several = len(sizes) > 1
    by_variant = {(s.experiment, s.variant): s for s in variant_stats(results)}
    deltas = [
        (paired_delta(stats, baseline), [r for r in results if r.experiment == stats.experiment and without_seed(r.variant) == stats.variant])
        for stats in by_variant.values()
        if not stats.is_baseline
        and (baseline := next((b for b in by_variant.values() if b.is_baseline and b.experiment == stats.experiment), None))
    ]
    bars = sorted(((d, runs) for d, runs in deltas if d.mean is not None), key=lambda item: item[0].mean)
    title = ["val top-1 change vs the baseline (paired by seed; bars: mean, lines: 95% interval)"] + [
        f"baseline {s.experiment + '/' if several else ''}{s.variant or s.experiment}: {s.mean:.2f}% (n = {s.n})"
        for s in by_variant.values()
        if s.is_baseline and s.mean is not None and sizes[s.experiment] > 1
    ]
    height = 1.6 + 0.2 * len(title) + 0.45 * max(len(bars), 2)
    figure = Figure(figsize=(8.5, height), dpi=_DPI, layout="constrained")
    ax = figure.subplots()
    ax.set_title("\n".join(title), fontsize="medium")
    ax.set_xlabel("Δ best val top-1 (percentage points)")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.grid(axis="x", alpha=0.3)
    if not bars:
        _empty(ax, "no variant and baseline with an evaluated epoch yet")
        ax.set_yticks([])
        return _save(figure, path)
    means = [d.mean for d, _ in bars]
    errors = [d.half_width or 0.0 for d, _ in bars]
    drawn = ax.barh(range(len(bars)), means, xerr=errors, capsize=4, color=[_GAIN if m >= 0 else _LOSS for m in means], alpha=0.8)
    for row, (delta, runs) in enumerate(bars):
        ax.plot(list(delta.differences.values()), [row] * delta.n, "o", color="black", markersize=3)
        if any(r.status != DONE for r in runs):
            drawn[row].set_hatch("//")
    labels = [f"{d.mean:+.2f}" + (f" ± {d.half_width:.2f}" if d.half_width is not None else " (n = 1)") for d, _ in bars]
    ax.bar_label(drawn, labels=labels, padding=3, fontsize="small")
    ax.set_yticks(range(len(bars)), [delta_label(runs[0], with_experiment=several) for _, runs in bars], fontsize="small")
    ends = [m - e for m, e in zip(means, errors)] + [m + e for m, e in zip(means, errors)]
    ends += [x for d, _ in bars for x in d.differences.values()]
    span = (max(*ends, 0.0) - min(*ends, 0.0)) or 1.0
    ax.set_xlim(min(*ends, 0.0) - 0.3 * span, max(*ends, 0.0) + 0.3 * span)  # room for the bar labels
    return _save(figure, path)


def delta_label(result: VariantResult, *, with_experiment: bool = False) -> str:
    """A bar's label: the variant name (without its seed), plus what it changes from the baseline when
    the name does not spell it (a named variant such as ``no_mixup``), plus the status when the run is not done."""
    variant = without_seed(result.variant)
    label = f"{result.experiment}/{variant}" if with_experiment and variant else variant or result.experiment
    # Grid variants are named after their values with the key's last part (research.config.expand).
    spelled = all(f"{key.rpartition('.')[2]}={format_value(v)}" in result.variant for key, v in result.changes.items())
    if not spelled:
        label += f"\n{result.changes_text}"
    return label if result.status == DONE else f"{label} ({result.status})"


def _curve_label(result: VariantResult, *, ablation: bool) -> str:
    label = "/".join(part for part in (result.variant, result.seed_dir) if part) or result.experiment
    if result.is_baseline and ablation:
        label += " (baseline)"
    return label if result.status == DONE else f"{label} ({result.status})"


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)  # attach the Agg canvas: savefig then needs no pyplot backend
    figure.savefig(path, format="png")
    return path


def plot_paper_beside_ours(comparisons: Sequence[Comparison], path: Path) -> Path:
    """The paper's delta and ours per paper row, side by side, with ✓ (same direction) or ✗.

    One panel per table (and metric): grey bars are the paper's change against its reference row,
    coloured bars ours against our run of that row. Throughput rows are drawn as a change in percent.
    A bar beyond the panel (the paper's "did not train well" rows, -77 points) is cut at its edge and
    labelled with its value.
    """
    return _save(paper_figure(comparisons), path)


def paper_figure(comparisons: Sequence[Comparison]) -> Figure:
    """The figure of :func:`plot_paper_beside_ours` (tests read its texts)."""
    panels: dict[tuple[str, str], list[Comparison]] = {}
    for comparison in comparisons:
        panels.setdefault((comparison.paper.title, comparison.paper.metric), []).append(comparison)
    heights = [1.4 + 0.55 * len(group) for group in panels.values()] or [2.0]
    figure = Figure(figsize=(10.0, sum(heights)), dpi=_DPI, layout="constrained")
    axes = figure.subplots(max(len(panels), 1), 1, squeeze=False, height_ratios=heights).ravel()
    if not panels:
        _empty(axes[0], "no paper row matches these experiments")
        axes[0].set_axis_off()
    for ax, ((title, metric), group) in zip(axes, panels.items()):
        _paper_panel(ax, title, metric, group)
    return figure


def _paper_panel(ax: Axes, title: str, metric: str, group: Sequence[Comparison]) -> None:
    def scaled(value: float | None) -> float | None:
        return None if value is None else (100.0 * (value - 1.0) if metric == "images_per_s" else value)

    theirs = [scaled(c.paper.delta) or 0.0 for c in group]
    ours = [scaled(c.our_delta) for c in group]
    shown = [abs(v) for v in ours if v is not None] + [abs(v) for v in theirs if abs(v) <= 10.0]
    limit = 1.35 * max(shown or [1.0])
    rows = range(len(group))
    ax.barh([y + 0.2 for y in rows], [_clip(v, limit) for v in theirs], height=0.38, color="#9a9a9a", label="paper")
    ours_drawn = [0.0 if v is None else _clip(v, limit) for v in ours]
    colours = [_GAIN if c.agrees else _LOSS if c.agrees is False else "#cccccc" for c in group]
    ax.barh([y - 0.2 for y in rows], ours_drawn, height=0.38, color=colours, label="ours")
    unit = "%" if metric == "images_per_s" else ""
    for y, (paper_value, our_value, comparison) in enumerate(zip(theirs, ours, group)):
        ax.text(_clip(paper_value, limit), y + 0.2, f" {paper_value:+.1f}{unit} ", va="center", fontsize="x-small",
                ha="left" if paper_value >= 0 else "right", color="#555555")
        text = "no run yet" if our_value is None else f"{our_value:+.2f}{unit}"
        ax.text(_clip(our_value or 0.0, limit), y - 0.2, f" {text} ", va="center", fontsize="x-small",
                ha="left" if (our_value or 0.0) >= 0 else "right")
        ax.text(1.01, y, comparison.mark, transform=ax.get_yaxis_transform(), va="center", fontsize="large",
                color=_GAIN if comparison.agrees else _LOSS if comparison.agrees is False else "gray")
    labels = [f"{c.paper.row}\n{c.experiment}/{c.paper.variant}" if c.paper.variant else f"{c.paper.row}\n{c.experiment}" for c in group]
    ax.set_yticks(list(rows), labels, fontsize="x-small")
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlim(-1.6 * limit, 1.6 * limit)  # room for the labels
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("change in throughput (%)" if metric == "images_per_s" else "Δ top-1 against the reference row (points)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize="x-small", loc="lower right")


def _clip(value: float, limit: float) -> float:
    return max(-limit, min(limit, value))
