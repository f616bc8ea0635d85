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

from research.config.expand import format_value
from research.engine.run_dir import DONE
from research.report.collect import VariantResult

__all__ = ["delta_label", "plot_top1_curves", "plot_top1_delta"]

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
    """Horizontal bars of each variant's best top-1 minus its baseline's, sorted, largest gain on top.

    Bars of runs that are not done are hatched and say so: the number is their best so far.
    """
    sizes = Counter(r.experiment for r in results)
    several = len(sizes) > 1
    bars = sorted((r for r in results if not r.is_baseline and r.delta_top1 is not None), key=lambda r: r.delta_top1)
    title = ["val top-1 change vs the baseline"] + [
        f"baseline {_name(r, several)}: {r.best_top1:.2f}%"
        for r in results
        if r.is_baseline and r.best_top1 is not None and sizes[r.experiment] > 1
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
    deltas = [r.delta_top1 for r in bars]
    drawn = ax.barh(range(len(bars)), deltas, color=[_GAIN if d >= 0 else _LOSS for d in deltas], alpha=0.9)
    for patch, result in zip(drawn, bars):
        if result.status != DONE:
            patch.set_hatch("//")
    ax.bar_label(drawn, labels=[f"{d:+.2f}" for d in deltas], padding=3, fontsize="small")
    ax.set_yticks(range(len(bars)), [delta_label(r, with_experiment=several) for r in bars], fontsize="small")
    span = max(abs(d) for d in deltas) or 1.0
    ax.set_xlim(min(*deltas, 0.0) - 0.35 * span, max(*deltas, 0.0) + 0.35 * span)  # room for the bar labels
    return _save(figure, path)


def delta_label(result: VariantResult, *, with_experiment: bool = False) -> str:
    """A bar's label: the variant name, plus what it changes from the baseline when the name does not
    spell it (a named variant such as ``no_mixup``), plus the status when the run is not done."""
    label = _name(result, with_experiment)
    # Grid variants are named after their values with the key's last part (research.config.expand).
    spelled = all(f"{key.rpartition('.')[2]}={format_value(v)}" in result.variant for key, v in result.changes.items())
    if not spelled:
        label += f"\n{result.changes_text}"
    return label if result.status == DONE else f"{label} ({result.status})"


def _curve_label(result: VariantResult, *, ablation: bool) -> str:
    label = result.variant or result.experiment
    if result.is_baseline and ablation:
        label += " (baseline)"
    return label if result.status == DONE else f"{label} ({result.status})"


def _name(result: VariantResult, with_experiment: bool) -> str:
    return result.name if with_experiment or not result.variant else result.variant


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)  # attach the Agg canvas: savefig then needs no pyplot backend
    figure.savefig(path, format="png")
    return path
