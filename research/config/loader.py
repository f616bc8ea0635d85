"""Load an experiment file into validated runs, before anything is built or queued.

``load_runs(path, overrides)`` reads the YAML (with ``_base_``), applies ``dotted.key=value``
overrides, imports the experiment's plugins, checks the typed schema, expands the ablation and
resolves every run's component sections against their builders. Any problem raises
:class:`ConfigError` naming the file, the key path and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from research.config import sources
from research.config.checks import (
    check_optimizer,
    check_resources,
    check_run_dir,
    check_values,
    check_warmup,
    user_path,
)
from research.config.components import SECTIONS, resolve_section
from research.config.errors import ConfigError
from research.config.expand import baseline_name, differing_keys, variant_overrides
from research.config.keys import is_linked_override
from research.config.schema import ExperimentCfg
from research.config.sources import Layered
from research.plugins import PluginError, import_plugins
from research.registry import LOSSES, MODELS, CheckContext, Invalid, model_img_size

CHECKPOINT = "last.pt"  # the file a finished run's weights are read from (teacher / finetune links)


@dataclass(frozen=True)
class Run:
    """One run of an experiment: a variant of an ablation, or the experiment itself."""

    experiment: str
    variant: str
    run_dir: Path
    cfg: ExperimentCfg
    source: Path
    differing: dict[str, Any] = field(default_factory=dict)  # keys whose value differs between the runs
    changes: dict[str, Any] = field(default_factory=dict)  # what this run sets unlike the baseline (all keys for it)
    is_baseline: bool = True
    seed_dir: str = ""  # ``seed<seed>`` when the experiment runs several seeds (``seeds: N``), else ""
    teacher_run: Run | None = None  # the run whose checkpoint the teacher loads (teacher.from_experiment)
    finetune_run: Run | None = None

    @property
    def name(self) -> str:
        """``experiment[/variant][/seed<k>]``: the run dir below ``output_dir``."""
        return "/".join(part for part in (self.experiment, self.variant, self.seed_dir) if part)

    def prerequisites(self) -> list[Run]:
        return [run for run in (self.teacher_run, self.finetune_run) if run is not None]


def load_runs(
    path: str | Path, overrides: Sequence[str] = (), *, check_files: bool = True, only: Sequence[str] = (),
    _stack: tuple[Path, ...] = (),
) -> list[Run]:
    """Every run an experiment file makes, validated.

    Args:
        path: the experiment YAML file.
        overrides: ``dotted.key=value`` items, applied over the file (and under ablation variants).
        check_files: also check that checkpoints the runs read (teacher.checkpoint, finetune.checkpoint)
            exist; off for commands that only show a plan (expand, --dry-run) on another machine.
        only: keep only these variants (all when empty); differences are still taken against the
            baseline, whether it is kept or not.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give an experiment .yaml file")
    command_line = sources.parse_command_line(overrides)
    layered = sources.apply_command_line(sources.load_layers(path, command_line.base), command_line)
    _import_plugins(layered)
    base = _structured(layered)
    where = layered.where("ablation")
    variants = variant_overrides(OmegaConf.to_container(base.ablation), where)  # type: ignore[arg-type]
    runs = []
    # where and how to run, and where the data is (research/config/keys.py), also apply to the runs this one links
    placement = [item for item in overrides if is_linked_override(item)]
    for variant, variant_tree in variants:
        source = f"{sources._display(path.resolve())} (variant {variant})" if variant else sources.COMMAND_LINE
        run_layers = sources.apply_overrides(layered, variant_tree, source) if variant_tree else layered
        run = _resolve_run(run_layers, path, variant, (*_stack, path.resolve()), check_files, placement)
        runs += _seeded(run, run_layers, base.seeds, layered.where("seeds"), check_files, placement, _stack)
    return _select(with_differences(runs, base.ablation.get("baseline")), only, path)


def _seeded(
    run: Run, layered: Layered, seeds: int, where: str, check_files: bool, placement: Sequence[str], stack: tuple[Path, ...]
) -> list[Run]:
    """``seeds: N`` makes N runs of a variant: run i trains with ``seed + i`` in ``<variant run dir>/seed<seed>``.

    A linked teacher is the one run its own file makes, shared by every seed of the student.
    """
    if seeds == 1:
        return [run]
    runs = [run]
    for offset in range(1, seeds):
        seed_layers = sources.apply_overrides(layered, {"seed": run.cfg.seed + offset}, f"{where} (seed {run.cfg.seed} + {offset})")
        runs.append(_resolve_run(seed_layers, run.source, run.variant, (*stack, run.source), check_files, placement))
    return [dataclasses.replace(one, seed_dir=f"seed{one.cfg.seed}", run_dir=one.run_dir / f"seed{one.cfg.seed}") for one in runs]


def _select(runs: list[Run], only: Sequence[str], path: Path) -> list[Run]:
    names = list(dict.fromkeys(run.variant for run in runs))  # a variant's seeds share its name
    unknown = [name for name in only if name not in names]
    if unknown:
        listed = ", ".join(names) if any(names) else "none: it is a single run"
        raise ConfigError(f"{path}: no variant {', '.join(map(repr, unknown))}; its variants are {listed}")
    return [run for run in runs if not only or run.variant in only]


def load_run(path: str | Path, overrides: Sequence[str] = ()) -> Run:
    """The single run of an experiment that has no ablation."""
    runs = load_runs(path, overrides)
    if len(runs) != 1:
        raise ConfigError(f"{path}: has {len(runs)} variants; expected a single run")
    return runs[0]


def _import_plugins(layered: Layered) -> None:
    try:
        plugins = layered.config.get("plugins") or []
        plugins = OmegaConf.to_container(plugins, resolve=True) if isinstance(plugins, ListConfig) else plugins
    except OmegaConfBaseException as exc:  # an interpolation that does not resolve
        raise ConfigError(f"{layered.where('plugins')}: plugins: {str(exc).splitlines()[0]}") from None
    if not isinstance(plugins, Sequence) or isinstance(plugins, str):
        raise ConfigError(f"{layered.where('plugins')}: plugins is a list of module names, got {plugins!r}")
    try:
        import_plugins([str(p) for p in plugins], where=layered.where("plugins"))
    except PluginError as exc:
        raise ConfigError(str(exc)) from None


@functools.cache
def _schema() -> DictConfig:
    """The typed schema as OmegaConf holds it; made once (OmegaConf.merge copies it, never changes it)."""
    schema = OmegaConf.structured(ExperimentCfg)
    assert isinstance(schema, DictConfig)
    return schema


def _structured(layered: Layered) -> DictConfig:
    """The merged config checked against the typed schema (unknown keys, types)."""
    return sources.typed_merge(_schema(), layered.config, layered.where)


def _resolve_run(
    layered: Layered, path: Path, variant: str, stack: tuple[Path, ...], check_files: bool, placement: Sequence[str]
) -> Run:
    raw = sources.plain(_structured(layered), layered.where)
    raw["name"] = raw["name"] or path.stem
    raw["variant"] = variant
    check_values(raw, layered.where, lambda key: _as_given(layered, key))
    check_run_dir(raw["output_dir"], raw["name"], variant, layered.where)
    # A loss that does not distil uses no teacher: it (and a run it links) is then not trained, built, checked or saved.
    if _distils(raw) is False:
        raw["teacher"] = None
    teacher_run = _linked_run(raw, "teacher", layered, path, stack, check_files, placement)
    finetune_run = _linked_run(raw, "finetune", layered, path, stack, check_files, placement)
    for key, spec in SECTIONS.items():
        if raw.get(key) is not None:
            raw[key] = resolve_section(spec, raw[key], layered.where)
    _evaluate_trained_heads(raw, layered)
    _check_rules(raw, layered)
    _check_components(raw, layered, check_files)
    cfg = OmegaConf.to_object(OmegaConf.merge(_schema(), raw))
    assert isinstance(cfg, ExperimentCfg)
    run_dir = Path(cfg.output_dir).expanduser().resolve() / cfg.name / variant
    cfg = dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir).expanduser().resolve()))
    return Run(cfg.name, variant, run_dir, cfg, path.resolve(), teacher_run=teacher_run, finetune_run=finetune_run)


def _as_given(layered: Layered, key: str) -> Any:
    """A key's value as the files or the command line wrote it (before conversion or interpolation)."""
    node: Any = layered.config
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node._get_node(part)  # the node, without resolving an interpolation it holds
    return node._value() if node is not None else None


def _linked_run(
    raw: dict[str, Any], key: str, layered: Layered, path: Path, stack: tuple[Path, ...], check_files: bool,
    placement: Sequence[str],
) -> Run | None:
    """Resolve ``teacher.from_experiment`` / ``finetune.from_experiment`` into that experiment's run
    (with the command line's ``placement`` overrides), and point the section's checkpoint at the
    run's final checkpoint."""
    section: dict[str, Any] | None = raw.get(key)
    link = section.get("from_experiment") if section else None
    if not link:
        if check_files and key == "finetune" and section and section.get("checkpoint"):
            _check_exists(section["checkpoint"], layered.where("finetune.checkpoint"), "finetune.checkpoint")
        return None
    assert section is not None  # it holds the link
    origin = layered.where(f"{key}.from_experiment")
    anchor = path.parent if origin == sources.COMMAND_LINE else Path(origin.split(" (")[0]).parent
    target = (anchor / link).resolve()
    if target in stack:
        raise ConfigError(f"{origin}: {key}.from_experiment {link!r} links back to itself")
    if not target.exists():
        raise ConfigError(f"{origin}: {key}.from_experiment: no experiment file {target}")
    runs = load_runs(target, placement, check_files=check_files, _stack=stack)
    if len(runs) != 1:
        raise ConfigError(f"{origin}: {key}.from_experiment {link!r} has {len(runs)} variants; it must make one run")
    linked = runs[0]
    if section.get("checkpoint"):
        raise ConfigError(f"{origin}: give either {key}.checkpoint or {key}.from_experiment, not both")
    section["from_experiment"] = str(target)
    section["checkpoint"] = str(linked.run_dir / CHECKPOINT)
    if key == "teacher":  # the linked run's network, at the resolution it trained at
        section["name"] = section.get("name") or linked.cfg.model["name"]
        section["img_size"] = section.get("img_size") or model_img_size(linked.cfg.model)
    return linked


def _distils(raw: dict[str, Any]) -> bool | None:
    """Whether the run's loss distils from a teacher (None: no such loss, reported when its section resolves)."""
    name = raw["loss"].get("name") if isinstance(raw.get("loss"), dict) else None
    return LOSSES.info(name).needs_teacher if isinstance(name, str) and name in LOSSES else None


def _evaluate_trained_heads(raw: dict[str, Any], layered: Layered) -> None:
    """Without distillation a distilled student's distillation head is never trained: its top-1 comes
    from the class head (``model.eval_head: both`` would average in the untrained head)."""
    head = raw["model"].get("eval_head")
    if _distils(raw) is not False or not MODELS.info(raw["model"]["name"]).distilled or head in (None, "class"):
        return
    if head == "distillation":
        raise ConfigError(
            f"{layered.where('model.eval_head')}: model.eval_head=distillation: loss {raw['loss']['name']!r} does not "
            "distil, so the distillation head is never trained; use model.eval_head=class or a distilling loss"
        )
    raw["model"]["eval_head"] = "class"


def _check_exists(file: str, where: str, key: str) -> None:
    try:
        found = user_path(file, key, lambda _: where).is_file()
    except OSError as exc:  # a part longer than the file system allows, ...
        raise ConfigError(f"{where}: {key}={file}: cannot use it: {exc.strerror}") from None
    if not found:
        raise ConfigError(f"{where}: {key}: no such file {file}")


def _check_rules(raw: dict[str, Any], layered: Layered) -> None:
    """Rules that span sections (values out of their declared bounds or choices were refused before)."""
    size = model_img_size(raw["model"])
    if size is None:
        raise ConfigError(
            f"{layered.where('model.img_size')}: model {raw['model']['name']!r} has no default resolution: set model.img_size"
        )
    patch = MODELS.info(raw["model"]["name"]).patch_size
    if patch and size % patch:
        raise ConfigError(
            f"{layered.where('model.img_size')}: model.img_size={size} is not a multiple of model "
            f"{raw['model']['name']!r}'s patch size {patch}; try {max(1, round(size / patch)) * patch}"
        )
    check_optimizer(raw["optim"], layered.where)
    check_warmup(raw, layered.where)
    check_resources(raw, layered.where)


def _check_components(raw: dict[str, Any], layered: Layered, check_files: bool) -> None:
    """The checks each picked component's registry holds (a recipe's loader needs, a teacher's file, ...)."""
    for key, spec in SECTIONS.items():
        if raw.get(key) is not None:
            try:
                spec.registry.check(CheckContext(raw[key]["name"], raw, check_files))
            except Invalid as exc:
                raise ConfigError(f"{layered.where(exc.key)}: {exc.message}") from None


def with_differences(runs: list[Run], baseline: str | None) -> list[Run]:
    """Each run's differing keys and its changes against the baseline run of the same seed dir (the
    seed of a ``seeds: N`` launch is no difference between variants: it is the pairing)."""
    flats = [sources.flatten(dataclasses.asdict(run.cfg)) for run in runs]
    seeded = ("seed",) if any(run.seed_dir for run in runs) else ()
    keys = [key for key in differing_keys(flats, ignore=("variant", "ablation.")) if key not in seeded]
    baseline = baseline_name(baseline, list(dict.fromkeys(run.variant for run in runs)))
    references = {run.seed_dir: flat for run, flat in zip(runs, flats) if run.variant == baseline}
    return [
        dataclasses.replace(
            run,
            differing={k: flat.get(k) for k in keys},
            changes={
                k: flat.get(k) for k in keys if run.variant == baseline or flat.get(k) != references.get(run.seed_dir, {}).get(k)
            },
            is_baseline=run.variant == baseline,
        )
        for run, flat in zip(runs, flats)
    ]
