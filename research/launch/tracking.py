"""The run's tracker (``logger:`` section), told who the run is: W&B group = the experiment (the
ablation), job type = the variant (its seeds pooled), name = the run, notes = the experiment file's
header comment (which holds the paper's figures)."""

from __future__ import annotations

from typing import Any

from torch import nn

from research.config import Run
from research.config.components import SECTIONS, build_component
from research.config.expand import without_seed
from research.config.sources import header_comment
from research.engine.state import unwrap
from research.launch.data import RunData
from research.launch.dist import DistEnv
from research.registry import LOSSES
from research.tracking import DEFAULT_PROJECT, RunInfo, flatten_config


def run_tags(run: Run, data: RunData) -> tuple[str, ...]:
    """The data-efficiency techniques that are on, so W&B can filter and colour by them."""
    cfg = run.cfg
    tags = list(data.recipe.techniques())
    if LOSSES.info(cfg.loss["name"]).needs_teacher:
        tags.append(f"distill-{cfg.loss['name']}")
    if cfg.train.ema:
        tags.append("ema")
    if cfg.model.get("drop_path_rate"):
        tags.append("stochastic-depth")
    if cfg.train.label_smoothing:
        tags.append("label-smoothing")
    if run.is_baseline and run.variant:
        tags.append("baseline")
    if without_seed(run.variant):
        tags.append(f"ablate:{without_seed(run.variant)}")  # what this run changes, as a filter
    tags.append(f"seed:{cfg.seed}")
    return tuple(tags)


def build_tracker(run: Run, record: dict[str, Any], data: RunData, model: nn.Module, env: DistEnv, life: int) -> Any:
    n_parameters = sum(p.numel() for p in unwrap(model).parameters())
    config = {
        **flatten_config(record),
        "git_commit": record["git"]["commit"],
        "n_parameters": n_parameters,
        "variant": without_seed(run.variant),  # the seed is its own key, `seed`
        "is_baseline": run.is_baseline,
    }
    info = RunInfo(
        run_dir=run.run_dir,
        project=run.cfg.logger.get("project") or DEFAULT_PROJECT,
        group=run.experiment,
        name=run.name,
        job_type=without_seed(run.variant) or run.cfg.job_type,  # the config keeps job_type (train, teacher, ...)
        tags=run_tags(run, data),
        config=config,
        is_rank_zero=env.is_main,
        life=max(life, 1),
        notes=header_comment(run.source),
    )
    return build_component(SECTIONS["logger"], run.cfg.logger, run=info)
