"""One result per run of an ablation, read from its run dir: what the report's table, plots and CSV show.

The run dir's ``metrics.jsonl`` is the source of truth (one line per finished epoch; a resume drops
the lines past the checkpoint it resumes from), so a run still training shows its best top-1 so far,
and a run that never started shows nothing. ``summary.json`` only exists once a run ended (done, failed or
interrupted), so it is read for what the epoch lines lack: the final throughput and the wall time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from research.config import Run
from research.config.expand import format_value
from research.engine.run_dir import DONE, FAILED, NOT_STARTED, RUNNING, read_config, read_metrics, read_summary, run_status

__all__ = [
    "RUN_DIR",
    "STATUSES",
    "WANDB",
    "VariantResult",
    "collect",
    "format_commit",
    "read_commit",
    "summarize",
    "with_deltas",
]

RUN_DIR, WANDB = "run dir", "wandb"  # where a result was read from (VariantResult.source)
STATUSES = (DONE, RUNNING, FAILED, NOT_STARTED)  # the order the report counts runs in


@dataclass(frozen=True)
class VariantResult:
    """What one run of an experiment reached. Top-1 / top-5 are validation accuracies in percent.

    Attributes:
        experiment: the experiment name (the W&B group).
        variant: the ablation variant, ``""`` for an experiment without an ablation.
        run_dir: where the run writes (or would write) its files.
        differing: the dotted config keys this experiment's variants disagree on, with this run's values.
        is_baseline: deltas of the other variants are measured against this one.
        status: ``done``, ``running`` (incl. queued, preempted, interrupted), ``failed`` or ``not started``.
        epochs: the epochs the run trains for.
        epochs_done: the epochs finished so far.
        curve: ``(epoch, val top-1)`` of every evaluated epoch, in epoch order.
        best_top1: the best val top-1 so far (the weights ``best.pt`` holds); None before the first eval.
        best_epoch: the epoch of ``best_top1``.
        top5: val top-5 at ``best_epoch``, so both numbers describe the same weights.
        last_top1: val top-1 of the last evaluated epoch.
        best_ema_top1: the best val top-1 of the EMA weights, when the run keeps an EMA (``train.ema``).
        teacher_top1: the teacher's val top-1, when the run distils.
        images_per_s: training throughput of the last epoch (all processes).
        wall_time_s: training time so far (excluding the time spent queued).
        seed: the run's ``seed``.
        head_top1: for a model with a distillation token, the top-1 of each prediction (``class``,
            ``distillation``, ``both``) at the best epoch.
        commit: the git commit the run's code came from, ``-dirty`` when it had uncommitted changes.
        source: ``"run dir"`` or ``"wandb"`` (read from the W&B API).
        inference_img_s: the model's inference images/s as ``research throughput`` measured it (not the
            training throughput of ``images_per_s``), for Table 5's throughput rows; None when unknown.
        seed_dir: ``seed<k>`` for a run of a ``seeds: N`` launch, else ``""``.
        keeps_ema: the run keeps an EMA of its weights (``train.ema``): it is judged on them (``score``).
        delta_top1: ``score`` minus that of the baseline run of the same seed, in percentage points; set
            by :func:`with_deltas`.
        changes: the ``differing`` keys whose value is not the baseline's (all of them for the baseline
            itself): what this variant changes, as the experiment's loader found it (``Run.changes``).
    """

    experiment: str
    variant: str
    run_dir: Path
    differing: Mapping[str, Any]
    is_baseline: bool
    status: str
    epochs: int
    epochs_done: int = 0
    curve: tuple[tuple[int, float], ...] = ()
    best_top1: float | None = None
    best_epoch: int | None = None
    top5: float | None = None
    last_top1: float | None = None
    best_ema_top1: float | None = None
    teacher_top1: float | None = None
    images_per_s: float | None = None
    wall_time_s: float | None = None
    seed: int | None = None
    head_top1: Mapping[str, float] = field(default_factory=dict)
    commit: str | None = None
    source: str = RUN_DIR
    inference_img_s: float | None = None
    keeps_ema: bool = False
    seed_dir: str = ""
    delta_top1: float | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The run name, as in W&B and the run dir: ``experiment[/variant][/seed<k>]``."""
        return "/".join(part for part in (self.experiment, self.variant, self.seed_dir) if part)

    @property
    def score_key(self) -> str:
        """What the run is judged on: the EMA weights' top-1 when it keeps an EMA (Table 8's EMA row
        is about those weights), else the raw weights'."""
        return "val_ema/top1" if self.keeps_ema else "val/top1"

    @property
    def score(self) -> float | None:
        """The best top-1 of :attr:`score_key` so far."""
        return self.best_ema_top1 if self.keeps_ema else self.best_top1

    @property
    def differing_text(self) -> str:
        """``aug.mixup=0 aug.cutmix=0``, or ``""`` for a single run."""
        return _spell(self.differing)

    @property
    def changes_text(self) -> str:
        """What the variant changes from the baseline, ``aug.mixup=0``; every differing key for the baseline."""
        return _spell(self.changes)


def collect(
    runs: Sequence[Run],
    status: Callable[[Path], str] = run_status,
    inference: Callable[[Run], float | None] = lambda run: None,
) -> list[VariantResult]:
    """The result of every run, read from the run dirs, with deltas against each experiment's baseline;
    ``status`` names a run dir's status (default: the engine's, which has no "training"), ``inference``
    a run's measured inference images/s (default: unknown)."""
    results = []
    for run in runs:
        shown = status(run.run_dir)
        records = read_metrics(run.run_dir) if shown != NOT_STARTED else []
        results.append(
            summarize(
                run,
                records,
                status=shown,
                summary=read_summary(run.run_dir),
                commit=read_commit(run.run_dir),
                source=RUN_DIR,
            )
        )
        results[-1] = dataclasses.replace(results[-1], inference_img_s=inference(run))
    return with_deltas(results)


def summarize(
    run: Run,
    records: Iterable[Mapping[str, Any]],
    *,
    status: str,
    summary: Mapping[str, Any] | None = None,
    commit: str | None = None,
    source: str = RUN_DIR,
) -> VariantResult:
    """Reduce a run's epoch records (``metrics.jsonl`` lines or W&B history rows) to its result.

    Args:
        run: the run, as the experiment file describes it.
        records: dicts with ``epoch`` and any of ``val/top1``, ``val/top5``, ``val_ema/top1``,
            ``teacher/top1``, ``train/epoch_images_per_s``; several records of one epoch (a resumed run
            that redid it) count once, the last one winning.
        status: the run's status (see :func:`research.engine.run_dir.run_status`).
        summary: the run's ``summary.json`` (or W&B summary), which fills what the records lack.
        commit: the code's git commit.
        source: where the records were read from.
    """
    summary = summary or {}
    by_epoch: dict[int, dict[str, Any]] = {}
    teacher_top1 = None
    for record in records:
        if "teacher/top1" in record:  # the epoch-0 line of a distilled run: the teacher, not the student
            teacher_top1 = _number(record["teacher/top1"])
        elif _number(record.get("epoch")) is not None and record["epoch"] >= 1:
            by_epoch[int(record["epoch"])] = dict(record)
    epochs = [by_epoch[epoch] for epoch in sorted(by_epoch)]
    curve = tuple((int(r["epoch"]), float(r["val/top1"])) for r in epochs if _number(r.get("val/top1")) is not None)
    best = max(curve, key=lambda point: point[1], default=None)  # first of equals, as fit() keeps best.pt
    best_record: Mapping[str, Any] = by_epoch[best[0]] if best else {}
    ema = [float(r["val_ema/top1"]) for r in epochs if _number(r.get("val_ema/top1")) is not None]
    throughput = [r["train/epoch_images_per_s"] for r in epochs if _number(r.get("train/epoch_images_per_s"))]
    return VariantResult(
        experiment=run.experiment,
        variant=run.variant,
        run_dir=run.run_dir,
        differing=dict(run.differing),
        changes=dict(run.changes),
        is_baseline=run.is_baseline,
        status=status,
        epochs=int(summary.get("epochs") or run.cfg.train.epochs),
        epochs_done=max([*by_epoch, int(_number(summary.get("epochs_done")) or 0)], default=0),
        curve=curve,
        best_top1=best[1] if best else _number(summary.get("best_top1")),
        best_epoch=best[0] if best else None,
        top5=_number(best_record.get("val/top5")),
        last_top1=curve[-1][1] if curve else _number(summary.get("last_top1")),
        best_ema_top1=max(ema, default=None),
        teacher_top1=teacher_top1 if teacher_top1 is not None else _number(summary.get("teacher/top1")),
        images_per_s=_number(summary.get("images_per_s")) or (float(throughput[-1]) if throughput else None),
        wall_time_s=_number(summary.get("wall_time_s")),
        seed=run.cfg.seed,
        head_top1={
            key.removeprefix("val/top1_"): float(value)
            for key, value in best_record.items()
            if key.startswith("val/top1_") and _number(value) is not None
        },
        commit=commit,
        source=source,
        keeps_ema=bool(run.cfg.train.ema),
        seed_dir=run.seed_dir,
    )


def with_deltas(results: Sequence[VariantResult]) -> list[VariantResult]:
    """``results`` with ``delta_top1``: the score minus that of their experiment's baseline run of the
    same seed, or of the first baseline run when no seed matches.

    A delta needs both numbers, so it stays None while the run or its baseline has no evaluated epoch.
    """
    baselines: dict[tuple[str, int | None], VariantResult] = {}
    for r in results:
        if r.is_baseline:
            baselines.setdefault((r.experiment, r.seed), r)
            baselines.setdefault((r.experiment, None), r)
    out = []
    for result in results:
        baseline = baselines.get((result.experiment, result.seed)) or baselines.get((result.experiment, None))
        reference = baseline.score if baseline is not None else None
        delta = None if result.score is None or reference is None else result.score - reference
        out.append(dataclasses.replace(result, delta_top1=delta))
    return out


def read_commit(run_dir: Path) -> str | None:
    """The git commit recorded in the run's ``config.yaml`` (``git.commit``), if the run started."""
    git = (read_config(run_dir) or {}).get("git") or {}
    return format_commit(git.get("commit"), git.get("dirty"))


def format_commit(commit: Any, dirty: Any = None) -> str | None:
    """``abc123``, or ``abc123-dirty`` (as ``git describe --dirty`` spells it); None when unknown."""
    if not commit or commit == "unknown":
        return None
    return f"{commit}-dirty" if dirty else str(commit)


def _spell(values: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={format_value(value)}" for key, value in values.items())


def _number(value: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN values (a diverged run logs NaN losses)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)

