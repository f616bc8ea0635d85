"""The runs a report reads, as their run dirs recorded them.

Each run dir's ``config.yaml`` holds the resolved config it trained with (name, variant, seed, every
override of its launch), so a report needs neither the experiment file nor the launch's overrides:
``research report runs/ablate_mixup`` reads every run dir below the folder. Given an experiment file,
the report reads the run dirs under ``<output_dir>/<name>`` the same way, and adds the runs the file
plans that have no run dir yet (not started). Run dirs set aside by ``--force`` (``*.replaced-<time>``)
are not read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from research.config import ConfigError, Run, load_runs
from research.config.loader import with_differences
from research.config.schema import ExperimentCfg
from research.engine.run_dir import CONFIG

__all__ = ["REPLACED", "read_run", "report_runs", "runs_under"]

REPLACED = ".replaced-"  # a run dir moved aside by --force / train.resume=false (research/launch/run_check.py)


def report_runs(paths: Sequence[Path], overrides: Sequence[str] = (), only: Sequence[str] = ()) -> list[Run]:
    """The runs of every path (an experiment file, or a folder of run dirs), each run dir once:
    ``only`` these variants and the baselines, which the deltas need."""
    runs: dict[Path, Run] = {}
    for path in paths:
        found = runs_under(path) if Path(path).is_dir() else _experiment_runs(Path(path), overrides)
        if not found:
            raise ConfigError(f"{path}: no run dir (a folder with a {CONFIG}) below it")
        names = {run.variant for run in found}
        unknown = [name for name in only if name not in names]
        if unknown and not Path(path).is_dir():
            load_runs(path, overrides, check_files=False, only=only)  # raises, naming the variants
        for run in found:
            if not only or run.variant in only or run.is_baseline:
                runs.setdefault(run.run_dir, run)
    return list(runs.values())


def runs_under(folder: Path) -> list[Run]:
    """Every run dir below ``folder`` (or ``folder`` itself), as its ``config.yaml`` describes it,
    compared within its experiment: the baseline is the run dirs' recorded one (the first variant
    when none is recorded)."""
    folder = Path(folder)
    files = sorted(folder.rglob(CONFIG))
    runs = [read_run(file.parent) for file in files if not any(REPLACED in part for part in file.relative_to(folder).parts)]
    runs.sort(key=lambda run: not run.is_baseline)  # the baseline first, then the folders' order
    return _compared(runs, baseline={})


def read_run(run_dir: Path) -> Run:
    """The run that trained in ``run_dir``, from its ``config.yaml``."""
    file = Path(run_dir) / CONFIG
    try:
        record = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExperimentCfg), _known(record, ExperimentCfg)))
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"{file}: cannot read this run's config ({str(exc).splitlines()[0]})") from None
    assert isinstance(cfg, ExperimentCfg)
    seed_dir = Path(run_dir).name if Path(run_dir).name == f"seed{cfg.seed}" and cfg.seeds > 1 else ""
    return Run(
        cfg.name, cfg.variant, Path(run_dir).resolve(), cfg, file.resolve(), is_baseline=bool(record.get("is_baseline", False)),
        seed_dir=seed_dir,
    )


def _experiment_runs(path: Path, overrides: Sequence[str]) -> list[Run]:
    """The run dirs under the experiment's folder, plus the runs the file plans that have none yet."""
    planned = load_runs(path, overrides, check_files=False)
    folder = Path(planned[0].cfg.output_dir) / planned[0].experiment
    found = runs_under(folder) if folder.is_dir() else []
    # read from the run dirs, made by this file (its header comment, its name in the report)
    found = [dataclasses.replace(run, source=path.resolve()) for run in found if run.experiment == planned[0].experiment]
    dirs = {run.run_dir for run in found}
    # a planned run dir that holds seed dirs was launched with --seeds: its seeds stand for it
    missing = [run for run in planned if run.run_dir not in dirs and not any(run.run_dir in d.parents for d in dirs)]
    baseline = next((run.variant for run in planned if run.is_baseline), None)
    order = {run.variant: index for index, run in enumerate(planned)}  # the file's order of variants
    runs = sorted([*found, *missing], key=lambda run: (order.get(run.variant, len(order)), run.cfg.seed))
    return _compared(runs, baseline={planned[0].experiment: baseline})


def _compared(runs: Sequence[Run], baseline: Mapping[str, str | None]) -> list[Run]:
    """Differences and baselines within each experiment; ``baseline`` names an experiment's baseline
    variant, else the one its run dirs recorded, else its first variant."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.experiment, []).append(run)
    out = []
    for experiment, group in groups.items():
        chosen = baseline.get(experiment) or next((run.variant for run in group if run.is_baseline), None)
        out += with_differences(group, chosen)
    return out


def _known(record: Mapping[str, Any], schema: type) -> dict[str, Any]:
    """``record`` without the keys ``schema`` lacks (provenance such as ``git``, or a key of another
    version of the code), recursing into the fixed sections."""
    fields = {field.name: field for field in dataclasses.fields(schema)}
    out = {}
    for key, value in record.items():
        if key not in fields:
            continue
        section = _section_type(schema, key)
        out[key] = _known(value, section) if section is not None and isinstance(value, Mapping) else value
    return out


def _section_type(schema: type, key: str) -> type | None:
    default = next(field for field in dataclasses.fields(schema) if field.name == key).default_factory
    made = default() if callable(default) else None
    return type(made) if dataclasses.is_dataclass(made) else None
