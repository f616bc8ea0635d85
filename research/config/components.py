"""Checking a registry-picked section (``model``, ``teacher``, ``loss``, ``data``, ``aug``, ``logger``)
against its builder, without building anything.

A section is ``name`` plus the builder's keyword arguments. The builder's signature is the schema:
unknown keys get a did-you-mean over its parameters, values are type-checked and converted from its
annotations (OmegaConf does the conversion through a dataclass made from the signature), required
parameters must be given, and parameters the engine injects (``num_classes`` comes from the dataset)
cannot be set; a parameter without an annotation takes its default's type when that is an int, float,
str or bool. Bounds and choices declared in the annotations (``Annotated[float, Range(ge=0, le=1)]``,
``Annotated[str, OneOf("a", "b")]`` or ``Literal["a", "b"]``, see :mod:`research.registry`) are checked
too, every bad value of a section reported at once. The
result is the section with every default filled in, so a run's saved config says exactly what ran.

A builder that takes ``**kwargs`` (``def my_model(*, num_classes, **kwargs)``) gets the keys its
signature does not name passed through as given: unchecked, since nothing says what they may be.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from research.config.errors import ConfigError
from research.config.sources import plain, typed_merge
from research.registry import (
    AUGMENTATIONS,
    DATASETS,
    LOGGERS,
    LOSSES,
    MODELS,
    TEACHERS,
    Marker,
    Registry,
    RegistryError,
    constraints,
    refusals,
    type_hints,
)


@dataclass(frozen=True)
class Section:
    """How one component section (``registry.section``: ``model``, ``aug``, ...) maps onto its registry."""

    registry: Registry[Any, Any]
    injected: tuple[str, ...]  # passed by the engine at build time, never from YAML
    reserved: tuple[str, ...] = ()  # section keys the loader itself consumes

    @property
    def key(self) -> str:
        return self.registry.section


SECTIONS: dict[str, Section] = {
    spec.key: spec
    for spec in (
        Section(MODELS, ("num_classes",)),
        # img_size: the resolution the teacher's checkpoint was trained at (research/teachers/checks.py)
        Section(TEACHERS, ("num_classes",), ("from_experiment", "img_size")),
        Section(LOSSES, ("base_criterion", "teacher")),
        Section(DATASETS, ("split", "transform")),
        Section(AUGMENTATIONS, ("img_size",)),
        Section(LOGGERS, ("run",)),
    )
}

_INJECTED_FROM = {
    "num_classes": "the dataset",
    "img_size": "model.img_size",
    "run": "the run (experiment, variant, run dir)",
    "teacher": "the teacher: section",
    "base_criterion": "train.label_smoothing and the mixup/cutmix settings",
    "split": "the engine (train / val)",
    "transform": "the aug: section",
}

_SIMPLE = (int, float, str, bool)


def component_kwargs(section: Mapping[str, Any], spec: Section) -> dict[str, Any]:
    """The builder's keyword arguments in a resolved section (no ``name``, no reserved keys)."""
    skip = {"name", *spec.reserved}
    return {key: value for key, value in section.items() if key not in skip}


def build_component(spec: Section, section: Mapping[str, Any], /, **injected: Any) -> Any:
    """Build the component a resolved section names, passing the engine's runtime values."""
    return spec.registry.build(section["name"], **component_kwargs(section, spec), **injected)


Where = Callable[[str], str]  # dotted key -> the file (or 'command line') that set it


def resolve_section(spec: Section, raw: Any, where: Where) -> dict[str, Any]:
    """Validate ``raw`` (the section as merged from the files and overrides) against the builder it
    names; return it with defaults filled in. ``where`` names the source of a bad key (``Layered.where``)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where(spec.key)}: {spec.key}: expected a mapping with a 'name' key, got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or name in ("", "???"):
        raise ConfigError(f"{where(spec.key)}: {spec.key}.name is missing; choose one of: {', '.join(spec.registry.names())}")
    try:
        builder = spec.registry.get(name)
    except RegistryError as exc:
        raise ConfigError(f"{where(spec.key + '.name')}: {spec.key}.name: {exc}") from None
    params = _keyword_parameters(builder)
    given = component_kwargs(raw, spec)
    open_ended = any(param.kind is inspect.Parameter.VAR_KEYWORD for param in inspect.signature(builder).parameters.values())
    _check_keys(spec, name, params, given, where, open_ended)
    unchecked = {key: value for key, value in given.items() if key not in params}  # only with **kwargs
    checked = {key: value for key, value in given.items() if key in params}
    values = _typed_values(spec, name, builder, checked, where)
    reserved = {key: raw[key] for key in spec.reserved if key in raw}
    return {"name": name, **values, **unchecked, **reserved}


def _keyword_parameters(builder: Any) -> dict[str, inspect.Parameter]:
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {key: param for key, param in inspect.signature(builder).parameters.items() if param.kind in keyword}


def _check_keys(
    spec: Section, name: str, params: Mapping[str, inspect.Parameter], given: Mapping[str, Any], where: Where, open_ended: bool
) -> None:
    settable = [key for key in params if key not in spec.injected]
    for key in given:
        if key in spec.injected:
            source = _INJECTED_FROM.get(key, "the engine")
            raise ConfigError(f"{where(f'{spec.key}.{key}')}: {spec.key}.{key} cannot be set here: it comes from {source}")
        if key not in params and not open_ended:
            close = difflib.get_close_matches(key, settable, n=1, cutoff=0.5)
            hint = f" Did you mean {spec.key}.{close[0]}?" if close else ""
            raise ConfigError(
                f"{where(f'{spec.key}.{key}')}: {spec.key}.{key}: {spec.registry.kind} {name!r} has no parameter {key!r}.{hint} "
                f"Its parameters: {', '.join(settable) or '(none)'}"
            )
    for key in settable:
        if params[key].default is inspect.Parameter.empty and key not in given:
            raise ConfigError(f"{where(spec.key)}: {spec.key}.{key} is required by {spec.registry.kind} {name!r}")


def _typed_values(spec: Section, name: str, builder: Any, given: Mapping[str, Any], where: Where) -> dict[str, Any]:
    schema, markers = _builder_schema(spec, name, builder)
    owner, prefix = f"{spec.registry.kind} {name!r}", f"{spec.key}."
    merged = typed_merge(schema, OmegaConf.create(dict(given)), where, prefix=prefix, owner=owner)
    values = plain(merged, where, prefix=prefix, owner=owner)
    if found := refusals(markers, values, given, prefix):
        raise ConfigError("; ".join(f"{where(prefix + key)}: {refusal}" for key, refusal in found.items()))
    return values


@functools.lru_cache(maxsize=512)
def _builder_schema(spec: Section, name: str, builder: Any) -> tuple[DictConfig, dict[str, tuple[Marker, ...]]]:
    """A builder's settable parameters as an OmegaConf structured config (the types it converts to and
    checks), and their :class:`Range` / :class:`OneOf` markers. Cached: making one costs more than
    checking a section with it (OmegaConf.merge copies it, never changes it)."""
    hints = type_hints(builder)
    fields: list[tuple[Any, ...]] = []
    markers: dict[str, tuple[Marker, ...]] = {}
    for key, param in _keyword_parameters(builder).items():
        if key in spec.injected:
            continue
        hint, markers[key] = constraints(hints.get(key, _unannotated_type(param)))
        default = param.default
        if default is inspect.Parameter.empty:
            fields.append((key, _omegaconf_type(hint)))
        else:
            # a factory, so mutable defaults (lists) are allowed and never shared
            fields.append((key, _omegaconf_type(hint), dataclasses.field(default_factory=functools.partial(copy.deepcopy, default))))
    schema = OmegaConf.structured(dataclasses.make_dataclass(f"{spec.key}_{name}", fields))
    return schema, markers


def _unannotated_type(param: inspect.Parameter) -> Any:
    """The type of an unannotated parameter's default when it is a number, a string or a bool (a plugin's
    ``depth=2`` then refuses ``depth: abc`` at load, not with a TypeError when built); else ``Any``."""
    unannotated = param.annotation is inspect.Parameter.empty
    return type(param.default) if unannotated and type(param.default) in _SIMPLE else Any


def _omegaconf_type(hint: Any) -> Any:
    """The annotation if OmegaConf can validate it, else ``Any``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SIMPLE or hint is Any:
        return hint
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) == 1 and type(None) in args:
            converted = _omegaconf_type(inner[0])
            return Any if converted is Any else typing.Optional[converted]
        return Any
    if origin in (list, typing.List) and len(args) == 1:  # noqa: UP006
        item = _omegaconf_type(args[0])
        return Any if item is Any else typing.List[item]  # type: ignore[valid-type]  # noqa: UP006
    return Any
