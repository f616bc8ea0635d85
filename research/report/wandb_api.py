"""Read runs back from the W&B API (``research report --wandb``), for runs whose run dirs are elsewhere.

The tracker (:mod:`research.tracking.wandb_logger`) names W&B runs so that they map back to the
experiment file: group = experiment, name = ``experiment/variant``. An offline run that was requeued
has one W&B run per life, named ``"experiment/variant (life n)"`` for n > 1; their histories are
stitched in life order, a later life winning for the epochs it redid after resuming from an older
checkpoint. This is the only module of the report that talks to the network.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

from research.config import Run
from research.engine.run_dir import DONE, FAILED, RUNNING
from research.report.collect import WANDB, VariantResult, format_commit, summarize
from research.tracking import DEFAULT_PROJECT, has_api_key

__all__ = ["HISTORY_KEYS", "WandbUnavailable", "fetch_results", "split_life"]

# The epoch records' keys a report needs; W&B returns only the history rows that hold all of them.
HISTORY_KEYS = ["epoch", "val/top1", "val/top5"]

_LIFE = re.compile(r"(?P<name>.+) \(life (?P<life>\d+)\)")


class WandbUnavailable(RuntimeError):
    """The W&B API cannot be used here (no credentials, no network); the report goes on without it."""


def fetch_results(runs: Sequence[Run], *, api: Any | None = None) -> list[VariantResult]:
    """The results of ``runs`` as W&B has them; runs W&B does not know are left out.

    Experiments that do not log to W&B (``logger.name`` other than ``wandb``) are not queried.
    Runs of one experiment are found by their W&B group (the experiment name) in the project the
    experiment's ``logger:`` section names.

    Args:
        runs: the runs of the experiments being reported.
        api: a ``wandb.Api`` (or an object with its ``runs`` / ``default_entity``); default: a new one.

    Raises:
        WandbUnavailable: no experiment logs to W&B, no W&B credentials, or the API failed (no network).
    """
    runs = [run for run in runs if run.cfg.logger.get("name") == "wandb"]
    if not runs:
        raise WandbUnavailable("none of these experiments logs to W&B (their logger.name is not wandb)")
    api = api if api is not None else _new_api()
    by_name = {run.name: run for run in runs}
    lives: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    try:
        for path, group in dict.fromkeys((_project_path(run, api), run.experiment) for run in runs):
            for wb_run in api.runs(path, filters={"group": group}):
                name, life = split_life(wb_run.name or "")
                if name in by_name:
                    lives[name].append((life, wb_run))
        ordered = {name: [wb_run for _, wb_run in sorted(found, key=itemgetter(0))] for name, found in lives.items()}
        return [_result(by_name[name], wb_runs) for name, wb_runs in ordered.items()]
    except Exception as exc:  # the public API raises requests / wandb CommError / ValueError alike
        raise WandbUnavailable(f"the API call failed: {type(exc).__name__}: {exc}") from exc


def split_life(wandb_name: str) -> tuple[str, int]:
    """``"exp/v (life 3)"`` -> ``("exp/v", 3)``; a name without a life suffix is life 1."""
    match = _LIFE.fullmatch(wandb_name)
    return (match["name"], int(match["life"])) if match else (wandb_name, 1)


def _new_api() -> Any:
    if not has_api_key():
        raise WandbUnavailable("no W&B credentials; run `wandb login` or set WANDB_API_KEY to read runs from W&B")
    try:
        import wandb

        return wandb.Api(timeout=30)
    except Exception as exc:
        raise WandbUnavailable(f"cannot start the W&B API: {type(exc).__name__}: {exc}") from exc


def _project_path(run: Run, api: Any) -> str:
    """``entity/project`` as the tracker logged to: the ``logger:`` section, else W&B's defaults."""
    project = run.cfg.logger.get("project") or DEFAULT_PROJECT
    entity = run.cfg.logger.get("entity") or os.environ.get("WANDB_ENTITY") or getattr(api, "default_entity", None)
    return f"{entity}/{project}" if entity else project


def _result(run: Run, lives: Sequence[Any]) -> VariantResult:
    """One run's result from its W&B lives, oldest first."""
    records = [row for wb_run in lives for row in wb_run.scan_history(keys=HISTORY_KEYS)]
    last = lives[-1]
    summary = dict(last.summary_metrics or {})
    # The engine's summary (status, images_per_s) is set when a life ends; a live run has only the
    # last logged values, where the throughput is the epoch's.
    summary.setdefault("images_per_s", summary.get("train/epoch_images_per_s"))
    config: Mapping[str, Any] = last.config or {}
    commit = format_commit(config.get("git.commit") or config.get("git_commit"), config.get("git.dirty"))
    status = _status(summary, run.cfg.train.epochs)
    return summarize(run, records, status=status, summary=summary, commit=commit, source=WANDB)


def _status(summary: Mapping[str, Any], epochs: int) -> str:
    """The run's status by the rules :func:`research.engine.run_dir.run_status` applies to a run dir.

    W&B's own run state is not used: a preempted or killed life is "crashed" or "failed" there, while
    the run itself is still going (it is requeued and resumes from its checkpoint).
    """
    status = summary.get("status")
    if status == DONE and (summary.get("epochs_done") or 0) >= int(summary.get("epochs") or epochs):
        return DONE
    if status == FAILED:
        return FAILED
    return RUNNING
