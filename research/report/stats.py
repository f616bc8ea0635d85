"""Seeds as evidence: per variant mean ± std over its seeds, and per variant the mean paired difference
from the baseline with a 95% interval.

A variant's runs are paired with the baseline's by seed (``seeds: N`` gives both the same seeds, so
the pair shares its init and data order, issue 25): only seeds present in both count. The interval is
Student's t with n - 1 degrees of freedom on the paired differences. A verdict on the paper's direction
needs an interval: ✓ when it excludes 0 on the paper's side, ✗ when it excludes 0 on the other side,
"within noise" when it contains 0, and "n = 1" when one pair gives no interval at all.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

from research.config.expand import without_seed
from research.report.collect import VariantResult

__all__ = [
    "AGREE",
    "CONFIDENCE",
    "DISAGREE",
    "NO_VERDICT",
    "WITHIN_NOISE",
    "PairedDelta",
    "VariantStats",
    "paired_delta",
    "variant_stats",
    "verdict",
]

CONFIDENCE = 0.95
AGREE, DISAGREE, WITHIN_NOISE, NO_VERDICT = "✓", "✗", "within noise", "n = 1"


@dataclass(frozen=True)
class VariantStats:
    """One variant's score over its seeds: ``scores`` maps a seed to the run's score."""

    experiment: str
    variant: str
    is_baseline: bool
    metric: str  # the key the score is read from: val/top1, or val_ema/top1 for a run that keeps an EMA
    scores: Mapping[int, float]
    changes: str  # what the variant changes from the baseline, spelled ``aug.mixup=0``

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.scores.values()) if self.scores else None

    @property
    def std(self) -> float | None:
        """The sample standard deviation (n - 1); None below two seeds."""
        return statistics.stdev(self.scores.values()) if self.n >= 2 else None


@dataclass(frozen=True)
class PairedDelta:
    """A variant minus the baseline, seed by seed: the mean difference and its 95% interval."""

    variant: VariantStats
    baseline: VariantStats
    differences: Mapping[int, float]  # seed -> variant score - baseline score, for seeds both have

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.differences.values()) if self.differences else None

    @property
    def half_width(self) -> float | None:
        """Half the 95% interval: t(0.975, n - 1) x s / sqrt(n); None below two pairs."""
        if self.n < 2:
            return None
        spread = statistics.stdev(self.differences.values())
        return float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, self.n - 1)) * spread / math.sqrt(self.n)

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.mean is None or self.half_width is None:
            return None
        return self.mean - self.half_width, self.mean + self.half_width


def variant_stats(results: Sequence[VariantResult]) -> list[VariantStats]:
    """One entry per (experiment, variant) in first-seen order, over the runs that have a score."""
    groups: dict[tuple[str, str], list[VariantResult]] = {}
    for result in results:
        groups.setdefault((result.experiment, without_seed(result.variant)), []).append(result)
    out = []
    for (experiment, variant), group in groups.items():
        scored = [r for r in group if r.score is not None]
        out.append(
            VariantStats(
                experiment=experiment,
                variant=variant,
                is_baseline=any(r.is_baseline for r in group),
                metric=group[0].score_key,
                scores={r.seed if r.seed is not None else i: r.score for i, r in enumerate(scored)},  # type: ignore[misc]
                changes=group[0].changes_text,
            )
        )
    return out


def paired_delta(variant: VariantStats, baseline: VariantStats) -> PairedDelta:
    """``variant`` minus ``baseline`` over the seeds both have."""
    seeds = [seed for seed in variant.scores if seed in baseline.scores]
    return PairedDelta(variant, baseline, {seed: variant.scores[seed] - baseline.scores[seed] for seed in seeds})


def verdict(delta: PairedDelta, paper_delta: float) -> str:
    """The paper's direction against our paired interval: ✓, ✗, within noise, or n = 1 (or ``-`` when
    there is no pair, or the paper saw no change)."""
    if delta.n == 0 or paper_delta == 0:
        return "-"
    interval = delta.interval
    if interval is None:
        return NO_VERDICT
    low, high = interval
    if low <= 0 <= high:
        return WITHIN_NOISE
    return AGREE if (low > 0) == (paper_delta > 0) else DISAGREE
