"""The report's table (Markdown for ``report.md``, plain text for the terminal) and ``runs.csv``."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from research.config.expand import format_value
from research.console import markdown_table, text_table
from research.report.collect import VariantResult
from research.report.stats import paired_delta, variant_stats

__all__ = ["CSV_COLUMNS", "csv_rows", "table", "variants_table", "write_csv"]

# Columns shown only when some run has a value (train.ema, distillation): header -> VariantResult field.
_OPTIONAL = {"EMA top-1": "best_ema_top1", "teacher top-1": "teacher_top1"}
# Per-head columns of distilled models: VariantResult.head_top1 key -> header prefix.
_HEADS = {"class": "class-head", "distillation": "dist.-head", "both": "both-heads"}

# runs.csv: the fixed columns, then one column per differing config key (``aug.mixup``, ...).
CSV_COLUMNS = (
    "experiment",
    "variant",
    "run",
    "is_baseline",
    "status",
    "epochs_done",
    "epochs",
    "best_top1",
    "best_epoch",
    "top5",
    "delta_top1",
    "last_top1",
    "best_ema_top1",
    "teacher_top1",
    "images_per_s",
    "wall_time_s",
    "seed",
    "differing",
    "commit",
    "source",
    "run_dir",
)


def table(results: Sequence[VariantResult], *, markdown: bool = True) -> str:
    """One experiment's runs as a table: variant, differing keys, best top-1, top-5 (at the best top-1),
    delta vs the baseline, epochs done / total, images/s, wall time, seed and status. Missing values
    show as ``-``. Distilled models add the top-1 of each head at the best epoch.

    The differing keys of a variant are those it sets differently from the baseline, which keeps the
    row of a named variant (``no_mixup``) short; the baseline's row lists all of them.
    """
    optional = {h: key for h, key in _OPTIONAL.items() if any(getattr(r, key) is not None for r in results)}
    heads = [head for head in _HEADS if any(head in r.head_top1 for r in results)]
    headers = ["variant", "differing keys", "best top-1", "top-5", "Δ top-1", *optional]
    headers += [f"{_HEADS[head]} top-1" for head in heads]
    headers += ["epochs", "images/s", "wall time", "seed", "status"]
    rows = []
    for result in results:
        name = "/".join(part for part in (result.variant, result.seed_dir) if part) or result.experiment
        if result.is_baseline and len(results) > 1:
            name += " (baseline)"
        rows.append(
            [
                name,
                result.changes_text or "-",
                _pct(result.best_top1),
                _pct(result.top5),
                _signed(result.delta_top1),
                *(_pct(getattr(result, key)) for key in optional.values()),
                *(_pct(result.head_top1.get(head)) for head in heads),
                f"{result.epochs_done}/{result.epochs}",
                None if result.images_per_s is None else f"{result.images_per_s:.0f}",
                _minutes(result.wall_time_s),
                None if result.seed is None else str(result.seed),
                result.status,
            ]
        )
    return (markdown_table if markdown else text_table)(headers, rows)


def variants_table(results: Sequence[VariantResult], *, markdown: bool = True) -> str:
    """One experiment's variants over their seeds: n, mean ± std of the score, and the mean paired
    difference from the baseline (seed by seed, seeds present in both) with its 95% interval."""
    stats = variant_stats(results)
    baseline = next((s for s in stats if s.is_baseline), None)
    rows = []
    for entry in stats:
        delta = paired_delta(entry, baseline) if baseline is not None and entry is not baseline else None
        interval = None if delta is None else delta.interval
        rows.append(
            [
                (entry.variant or entry.experiment) + (" (baseline)" if entry.is_baseline and len(stats) > 1 else ""),
                entry.changes or "-",
                entry.metric,
                str(entry.n),
                None if entry.mean is None else f"{entry.mean:.2f}" + ("" if entry.std is None else f" ± {entry.std:.2f}"),
                None if delta is None or delta.mean is None else f"{delta.mean:+.2f}",
                None if interval is None else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]",
                None if delta is None else str(delta.n),
            ]
        )
    headers = ["variant", "differing keys", "judged on", "n", "top-1 mean ± std", "Δ vs baseline (paired)", "95% interval", "pairs"]
    return (markdown_table if markdown else text_table)(headers, rows)


def csv_rows(results: Sequence[VariantResult]) -> list[dict[str, Any]]:
    """One dict per run: :data:`CSV_COLUMNS`, then the differing keys of every experiment (blank where
    a run's experiment does not vary that key), so a script can group by them."""
    keys = list(dict.fromkeys(key for result in results for key in result.differing))
    rows = []
    for result in results:
        row = {column: _csv_value(result, column) for column in CSV_COLUMNS}
        row.update({key: format_value(result.differing[key]) if key in result.differing else "" for key in keys})
        rows.append(row)
    return rows


def write_csv(results: Sequence[VariantResult], path: Path) -> None:
    """``runs.csv``: :func:`csv_rows`, with missing values as empty cells."""
    rows = csv_rows(results)
    columns = list(rows[0]) if rows else list(CSV_COLUMNS)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)


def _csv_value(result: VariantResult, column: str) -> Any:
    if column == "run":
        return result.name
    if column == "differing":
        return result.differing_text
    value = getattr(result, column)
    if isinstance(value, float):
        return round(value, 4)
    return str(value) if isinstance(value, Path) else value


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str | None:
    return None if value is None else f"{value:+.2f}"


def _minutes(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds / 60:.1f} min"
