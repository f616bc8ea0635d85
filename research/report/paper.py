"""The paper beside ours: Tables 3, 5 and 8 of DeiT next to the runs of a report, row by row.

``paper.yaml`` (beside this module) holds the paper's figures. Each paper row compares a row of its
table with a reference row, as an ablation compares a variant with its baseline; the report shows,
per row, the paper's delta, ours (the same two runs of ours: mean best top-1 over seeds, or
images/s), and whether the two go the same way (✓) or not (✗). The scales differ (ImageNet for 300
epochs against, often, CIFAR-10 on a short budget), so the direction is what is compared.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from research.config import ConfigError
from research.config.expand import without_seed
from research.console import markdown_table, text_table
from research.report.collect import VariantResult
from research.report.stats import AGREE, DISAGREE, PairedDelta, paired_delta, variant_stats, verdict

__all__ = ["DEFAULT_PAPER", "AGREE", "DISAGREE", "Comparison", "PaperRow", "compare", "paper_table", "read_paper"]

DEFAULT_PAPER = Path(__file__).with_name("paper.yaml")

METRICS = ("top1", "images_per_s")


@dataclass(frozen=True)
class PaperRow:
    """One figure of the paper and the reference it is compared with.

    ``experiment``/``variant`` name our run of the row (``variant`` in any of ``experiments``, or a
    whole ``experiment``); ``reference_*`` name our run of the reference row.
    """

    table: str
    title: str
    row: str
    value: float
    reference_value: float
    reference_row: str
    metric: str
    experiments: tuple[str, ...]  # experiments whose variants the row matches; empty: by experiment
    variant: str = ""
    experiment: str = ""
    reference_variant: str = ""
    reference_experiment: str = ""

    @property
    def delta(self) -> float:
        """Row minus reference: percentage points, or a ratio for throughput."""
        return self.value / self.reference_value if self.metric == "images_per_s" else self.value - self.reference_value


@dataclass(frozen=True)
class Comparison:
    """A paper row beside our run of it; ``ours`` is None until both of our runs have a value."""

    paper: PaperRow
    experiment: str  # our experiment
    ours: float | None = None
    reference: float | None = None
    runs: int = 0  # our runs averaged into ``ours`` (seeds)
    paired: PairedDelta | None = None  # top-1 rows of an ablation: our runs against the reference's, seed by seed

    @property
    def our_delta(self) -> float | None:
        if self.paired is not None and self.paired.mean is not None:
            return self.paired.mean
        if self.ours is None or self.reference is None:
            return None
        return self.ours / self.reference if self.paper.metric == "images_per_s" else self.ours - self.reference

    @property
    def agrees(self) -> bool | None:
        """Same direction as the paper's delta; None when ours is missing or the paper's is no change."""
        ours, theirs = self.our_delta, self.paper.delta
        if ours is None:
            return None
        centre = 1.0 if self.paper.metric == "images_per_s" else 0.0
        if theirs == centre:
            return None
        return (ours > centre) == (theirs > centre) and ours != centre

    @property
    def mark(self) -> str:
        """The verdict: for a top-1 row of an ablation, the paired 95% interval against the paper's
        direction (:func:`research.report.stats.verdict`); otherwise ✓ / ✗ on the direction alone."""
        if self.paired is not None:
            return verdict(self.paired, self.paper.delta)
        return "-" if self.agrees is None else AGREE if self.agrees else DISAGREE


def read_paper(path: str | Path | None = None) -> list[PaperRow]:
    """The paper rows of ``path`` (default: the package's ``paper.yaml``)."""
    file = Path(path) if path is not None else DEFAULT_PAPER
    if not file.exists():
        raise ConfigError(f"paper figures {file}: no such file")
    data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    rows = []
    for table, spec in data.items():
        try:
            rows += [_row(table, spec, entry) for entry in spec["rows"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{file}: {table}: malformed entry ({exc!r}); see the file's header") from None
    return rows


def _row(table: str, spec: Mapping[str, Any], entry: Mapping[str, Any]) -> PaperRow:
    reference = spec.get("reference") or {}
    metric = entry.get("metric", spec.get("metric", "top1"))
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    return PaperRow(
        table=table,
        title=str(spec.get("title", table)),
        row=str(entry["row"]),
        value=float(entry["value"]),
        reference_value=float(entry.get("reference_value", reference.get("value"))),
        reference_row=str(entry.get("reference_row", reference.get("row", entry.get("reference_experiment", "")))),
        metric=metric,
        experiments=tuple(spec.get("experiments", ())),
        variant=str(entry.get("variant", "")),
        experiment=str(entry.get("experiment", "")),
        reference_variant=str(reference.get("variant", "")),
        reference_experiment=str(entry.get("reference_experiment", "")),
    )


def compare(results: Sequence[VariantResult], rows: Sequence[PaperRow]) -> list[Comparison]:
    """The paper rows that some experiment of ``results`` runs, each beside our values, in file order."""
    by_experiment: dict[str, list[VariantResult]] = {}
    for result in results:
        by_experiment.setdefault(result.experiment, []).append(result)
    comparisons = []
    for row in rows:
        if row.experiment:  # a whole experiment against another (Table 5)
            if row.experiment not in by_experiment or row.reference_experiment not in by_experiment:
                continue
            ours = _value(by_experiment[row.experiment], "", row.metric)
            reference = _value(by_experiment[row.reference_experiment], "", row.metric)
            comparisons.append(Comparison(row, row.experiment, ours[0], reference[0], ours[1]))
            continue
        for experiment in row.experiments:
            group = by_experiment.get(experiment, [])
            if not any(without_seed(r.variant) == row.variant for r in group):
                continue
            ours = _value(group, row.variant, row.metric)
            reference = _value(group, row.reference_variant, row.metric)
            stats = {s.variant: s for s in variant_stats(group)}
            paired = None
            if row.metric == "top1" and row.variant in stats and row.reference_variant in stats:
                paired = paired_delta(stats[row.variant], stats[row.reference_variant])
            comparisons.append(Comparison(row, experiment, ours[0], reference[0], ours[1], paired))
    return comparisons


def _value(group: Sequence[VariantResult], variant: str, metric: str) -> tuple[float | None, int]:
    """The mean over seeds of the variant's score (top-1, of the EMA weights for a run that keeps an
    EMA) or inference images/s (the paper's Table 5 measures inference, so never our training rate),
    and how many runs have one."""
    values = [
        value
        for r in group
        if (not variant or without_seed(r.variant) == variant)
        and (value := (r.score if metric == "top1" else r.inference_img_s)) is not None
    ]
    return (statistics.fmean(values) if values else None), len(values)


def paper_table(comparisons: Sequence[Comparison], *, markdown: bool = True) -> str:
    """One table's comparisons: paper row, our run, the paper's figure and delta, ours (with the paired
    95% interval and the number of seed pairs), and the verdict on the paper's direction."""
    headers = ["paper row", "our run", "paper", "paper Δ", "ours", "our Δ (95% CI)", "pairs", "paper's direction"]
    rows = []
    for c in comparisons:
        name = c.paper.variant or c.experiment
        if c.paper.variant:
            name = f"{c.experiment}/{name}" + (f" (mean of {c.runs})" if c.runs > 1 else "")
        rows.append(
            [c.paper.row, name, _figure(c.paper.value, c.paper.metric), _delta(c.paper.delta, c.paper.metric),
             _figure(c.ours, c.paper.metric), _our_delta(c), None if c.paired is None else str(c.paired.n), c.mark]
        )
    return (markdown_table if markdown else text_table)(headers, rows)


def _our_delta(c: Comparison) -> str | None:
    text = _delta(c.our_delta, c.paper.metric)
    if text is not None and c.paired is not None and c.paired.interval is not None:
        low, high = c.paired.interval
        text += f" [{low:+.2f}, {high:+.2f}]"
    return text


def _figure(value: float | None, metric: str) -> str | None:
    if value is None:
        return None
    return f"{value:,.0f}" if metric == "images_per_s" else f"{value:.2f}"


def _delta(value: float | None, metric: str) -> str | None:
    if value is None:
        return None
    return f"x{value:.2f}" if metric == "images_per_s" else f"{value:+.2f}"
