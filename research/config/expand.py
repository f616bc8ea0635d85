"""Ablations: an experiment's ``ablation:`` section becomes one run per variant.

``ablation.variants`` maps a variant name to overrides; ``ablation.grid`` maps dotted keys to lists
of values. With both, every named variant is crossed with every grid point. Grid points are named
after their values with the key's last part (``mixup=0``, or the full key when two grid keys end the
same way), so names are stable and readable: the run ``ablate_mixup/mixup=0`` lives in
``<output_dir>/ablate_mixup/mixup=0``. ``ablation.studies`` names the keys the variants change, and
nothing else may change: a variant that sets another key is refused.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from research.config.errors import ConfigError
from research.config.keys import covered
from research.config.sources import as_override_tree, flatten

_SEED_PART = re.compile(r"(^|,)seed=[^,]*")


def without_seed(variant: str) -> str:
    """A variant's name without its seed: the grid point ``no_mixup,seed=1`` is the variant ``no_mixup``
    (``seeds: N`` keeps the seed out of the name already: ``no_mixup`` in ``no_mixup/seed1``)."""
    return _SEED_PART.sub("", variant).strip(",")


def format_value(value: Any) -> str:
    """A compact, YAML-like spelling for names and tables: ``0.8``, ``true``, ``null``, ``[1,2]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def _grid_points(grid: Mapping[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    if not grid:
        return [("", {})]
    for key, values in grid.items():
        if not isinstance(values, Sequence) or isinstance(values, str) or not values:
            raise ConfigError(f"{where}: ablation.grid.{key}: expected a non-empty list of values, got {values!r}")
    keys = list(grid)
    tails = [key.rpartition(".")[2] for key in keys]
    labels = [key if tails.count(tail) > 1 else tail for key, tail in zip(keys, tails)]
    points = []
    for combo in itertools.product(*(grid[key] for key in keys)):
        name = ",".join(f"{label}={format_value(value)}" for label, value in zip(labels, combo))
        points.append((name, dict(zip(keys, combo))))
    return points


def variant_overrides(ablation: Mapping[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """``[(variant name, nested overrides), ...]`` in file order; ``[("", {})]`` for a single run."""
    variants = ablation.get("variants") or {}
    named = [(str(name), _variant_tree(name, overrides, where)) for name, overrides in variants.items()] or [("", {})]
    if ablation.get("studies"):
        _check_studies(ablation["studies"], named, ablation.get("grid") or {}, where)
    runs = []
    for (name, overrides), (point, values) in itertools.product(named, _grid_points(ablation.get("grid") or {}, where)):
        full = ",".join(part for part in (name, point) if part)  # one folder name: research.config.checks
        merged = _deep_merge(overrides, as_override_tree(values))
        runs.append((full, merged))
    names = [name for name, _ in runs]
    if len(set(names)) != len(names):
        dupes = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(f"{where}: ablation gives two variants the same name: {', '.join(dupes)}")
    baseline = ablation.get("baseline")
    if baseline is not None and baseline_name(baseline, names) is None:
        raise ConfigError(f"{where}: ablation.baseline {baseline!r} is not a variant; variants: {', '.join(names)}")
    return runs


def _variant_tree(name: str, overrides: Any, where: str) -> dict[str, Any]:
    if not name:
        raise ConfigError(f"{where}: ablation.variants: a variant needs a name")
    if isinstance(overrides, str) or not isinstance(overrides, (Mapping, Sequence, type(None))):
        raise ConfigError(
            f"{where}: ablation.variants.{name}: expected overrides as a mapping ({{optim.lr: 1e-3}}) or a list "
            f"(['optim.lr=1e-3']), got {overrides!r}"
        )
    if isinstance(overrides, Sequence) and not all(isinstance(item, str) for item in overrides):
        raise ConfigError(f"{where}: ablation.variants.{name}: a list of overrides holds 'key=value' strings, got {overrides!r}")
    return as_override_tree(overrides or {})


def _check_studies(studies: Sequence[str], named: Sequence[tuple[str, Mapping[str, Any]]], grid: Mapping[str, Any], where: str) -> None:
    """Every key a variant or the grid sets is (or lies below) a studied key, and every studied key is set."""
    sets = [(f"ablation.variants.{name}", key) for name, tree in named for key in flatten(tree)] + [("ablation.grid", str(k)) for k in grid]
    for place, key in sets:
        if not covered(key, studies):
            raise ConfigError(
                f"{where}: {place} sets {key}, which ablation.studies [{', '.join(studies)}] does not list; "
                "add it to ablation.studies or take it out of the variant"
            )
    if unused := [study for study in studies if not any(covered(key, (study,)) for _, key in sets)]:
        raise ConfigError(f"{where}: ablation.studies lists {', '.join(unused)}, which no variant or grid key sets; remove it")


def baseline_name(baseline: str | None, names: Sequence[str]) -> str | None:
    """The run name ``ablation.baseline`` picks: a full variant name, or a named variant crossed with a
    grid (``full`` -> ``full,seed=0``, its first grid point); the first variant when unset."""
    if baseline is None:
        return names[0] if names else None
    if baseline in names:
        return baseline
    return next((name for name in names if name.startswith(f"{baseline},")), None)


def _deep_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def differing_keys(flat_configs: Sequence[Mapping[str, Any]], ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose value is not the same in every config, in first-seen order."""
    keys: dict[str, None] = {}
    for flat in flat_configs:
        keys.update(dict.fromkeys(flat))
    missing = object()
    return [
        key
        for key in keys
        if not key.startswith(ignore)
        and len({repr(flat.get(key, missing)) for flat in flat_configs}) > 1
    ]
