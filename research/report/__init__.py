"""Ablation reports: ``research report experiments/ablate_mixup.yaml [more.yaml] [--out DIR] [--wandb]``.

Reads every run of the experiments from its run dir (``metrics.jsonl``, ``summary.json``), or from the
W&B API with ``--wandb``, and writes a report dir: ``report.md`` (one table per experiment: best
top-1 / top-5, delta vs the baseline variant, epochs, throughput, status), ``runs.csv``,
``top1_curves.png`` and ``top1_delta.png``. See docs/REPORTS.md.
"""

from research.report.collect import VariantResult, collect, summarize, with_deltas
from research.report.write import write_report

__all__ = ["VariantResult", "collect", "summarize", "with_deltas", "write_report"]
