"""Name -> builder registries, one per extension point (the builders' contract: :class:`Registry`).

Names are explicit strings (never ``fn.__name__``): renaming a function must not break experiment files.
A duplicate name raises at registration and names both places; an unknown name raises
:class:`RegistryError` (a ``KeyError``) listing the closest known names.

Each registry has a typed info record (:class:`ModelInfo`, :class:`TeacherInfo`, :class:`LossInfo`,
:class:`DatasetInfo`) describing an entry without building it, and optional checks: functions the
config loader calls on every run that picks an entry of the kind (:meth:`Registry.add_check`), so
rules about a component live beside it and the loader knows no kind.

Parameters declare their bounds and choices beside them, in the annotation: :class:`Range`
(``drop_path_rate: Annotated[float, Range(ge=0, lt=1)] = 0.1``) and :class:`OneOf`
(``precision: Annotated[str, OneOf("fp32", "bf16", "fp16")]``; a ``Literal[...]`` means the same).
:func:`refusals` checks values against them: the config loader when an experiment loads (so a plugin's
builder gets the same checks as the built-ins), and :meth:`Registry.build` for the keyword arguments
it is given (so a notebook's ``LOSSES.build("soft", alpha=2, ...)`` is refused as a file would be).

Every lookup (``get``, ``build``, ``info``, ``names``, ``in``, ``len``, iteration) first loads the built-ins and
the plugins' entry points, once (:func:`research.plugins.load_builtins`): ``MODELS.build(...)`` works in a fresh
notebook, while importing this module or registering loads nothing (no torch, no timm).
"""

from __future__ import annotations

import difflib
import inspect
import math
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from research.plugins import load_builtins

T = TypeVar("T")
Builder = Callable[..., Any]

__all__ = [
    "AUGMENTATIONS", "BACKENDS", "DATASETS", "LOGGERS", "LOSSES", "MODELS", "TEACHERS", "REGISTRIES", "Check", "CheckContext",
    "DatasetInfo", "Info", "Invalid", "LossInfo", "ModelInfo", "OneOf", "Range", "Registry", "RegistryError", "TeacherInfo",
    "constraints", "model_img_size", "refusals",
]


class RegistryError(KeyError):
    """An unknown or duplicate registry name. ``str()`` gives the plain message (KeyError quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _where(fn: Builder) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


@dataclass(frozen=True)
class Range:
    """Bounds on a number, declared in its annotation: ``Annotated[float, Range(ge=0, le=1)]``.

    ``ge``/``gt`` and ``le``/``lt`` are inclusive/exclusive bounds (None: unbounded); ``hint`` says what
    the number is, for the error. None passes (an ``Optional`` value left unset), a list is checked item
    by item, and NaN or infinity never passes.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    hint: str = ""
    SAYS: ClassVar[str] = "{key}={value!r}: {problem}"  # how a refusal reads

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of bounds, as ``"must be >= 0 (hint)"``; None when it is in bounds."""
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return next((p for p in map(self.problem, value) if p), None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self._say("must be a number")
        if not math.isfinite(value):
            return self._say("must be a finite number")
        below = (self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
        above = (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt)
        return self._say(f"must be {self}") if below or above else None

    def _say(self, text: str) -> str:
        return f"{text} ({self.hint})" if self.hint else text

    def __str__(self) -> str:
        low = f">= {_number(self.ge)}" if self.ge is not None else f"> {_number(self.gt)}" if self.gt is not None else ""
        high = f"<= {_number(self.le)}" if self.le is not None else f"< {_number(self.lt)}" if self.lt is not None else ""
        return " and ".join(part for part in (low, high) if part) or "a number"


def _number(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


@dataclass(frozen=True, init=False)
class OneOf:
    """The values a setting may take, declared in its annotation: ``Annotated[str, OneOf("epoch", "step")]``.

    A ``Literal["epoch", "step"]`` annotation is read as the same marker (see :func:`constraints`).
    ``hint`` says what the choices are, for the error; None is refused unless it is one of them.
    """

    SAYS: ClassVar[str] = "{key} {value!r} {problem}"  # how a refusal reads
    choices: tuple[Any, ...]
    hint: str = ""

    def __init__(self, *choices: Any, hint: str = "") -> None:
        object.__setattr__(self, "choices", choices)
        object.__setattr__(self, "hint", hint)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not a choice, as ``"is not one of epoch, step"``; None when it is one."""
        if value in self.choices:
            return None
        listed = ", ".join("null" if choice is None else str(choice) for choice in self.choices)
        return f"is not one of {listed} ({self.hint})" if self.hint else f"is not one of {listed}"


Marker = Range | OneOf


def constraints(hint: Any) -> tuple[Any, tuple[Marker, ...]]:
    """An annotation without its ``Annotated`` wrapper, and the :class:`Range` / :class:`OneOf` markers
    it held. A ``Literal[...]`` (or ``Optional[Literal[...]]``, None then a choice) is ``Any`` with a
    :class:`OneOf` of its values, so that OmegaConf, which does not take every ``Literal``, converts nothing."""
    markers: tuple[Marker, ...] = ()
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        markers = tuple(extra for extra in extras if isinstance(extra, (Range, OneOf)))
    args = typing.get_args(hint)
    literals = [arg for arg in args if typing.get_origin(arg) is typing.Literal]
    if typing.get_origin(hint) is typing.Literal:
        return Any, (*markers, OneOf(*args))
    if len(literals) == 1 and set(args) == {literals[0], type(None)}:
        return Any, (*markers, OneOf(*typing.get_args(literals[0]), None))
    return hint, markers


def type_hints(fn: Any) -> dict[str, Any]:
    """``fn``'s annotations, ``Annotated`` markers kept; {} when one names a type not importable here."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # check nothing rather than fail on an annotation only a type checker reads
        return {}


def refusals(
    markers: Mapping[str, Sequence[Marker]], values: Mapping[str, Any], shown: Mapping[str, Any] | None = None, prefix: str = ""
) -> dict[str, str]:
    """Key -> why its value in ``values`` breaks a bound or choice declared for it, for every key that does.

    A refusal reads ``alpha=2: must be >= 0 and <= 1`` (a bound) or ``kl_reduction 'mean' is not one of
    numel, batchmean`` (a choice), the key with ``prefix`` (``loss.``) and the value as ``shown`` gives it
    (as the file wrote it), else as in ``values``. Keys without markers, or missing from ``values``, pass.
    """
    found = {}
    for key, value in values.items():
        for marker in markers.get(key, ()):
            if (problem := marker.problem(value)) is not None:
                given = shown.get(key, value) if shown is not None else value
                found[key] = marker.SAYS.format(key=f"{prefix}{key}", value=given, problem=problem)
                break
    return found


@dataclass(frozen=True)
class Info:
    """What an entry says about itself without being built (kinds with nothing to say use this)."""


@dataclass(frozen=True)
class ModelInfo(Info):
    """A student (or a network a teacher wraps).

    Attributes:
        distilled: it has a distillation token and head (a distillation loss needs one).
        default_img_size: the input resolution its defaults are for; ``model.img_size`` overrides it.
        family: ``deit`` or ``cnn``.
        patch_size: a ViT's patch side, None for a CNN.
    """

    distilled: bool = False
    default_img_size: int | None = None
    family: str = ""
    patch_size: int | None = None


@dataclass(frozen=True)
class TeacherInfo(Info):
    """A teacher: its network (``arch``, built by ``source``: timm or this package's MODELS) and the
    input resolution its weights were trained at (None: say it with ``teacher.img_size``)."""

    arch: str | None = None
    source: str = ""
    img_size: int | None = None


@dataclass(frozen=True)
class LossInfo(Info):
    """An objective: whether it distils from a teacher (and so trains a distillation head)."""

    needs_teacher: bool = False


@dataclass(frozen=True)
class DatasetInfo(Info):
    """A dataset's sizes known without reading it (None: unknown until declared or counted).

    Attributes:
        train_size, val_size, num_classes: images per split and classes, as the builder knows them.
        keys: the ``data:`` keys (builder parameters) that state the same three where the dataset's
            size is a parameter (``synthetic``'s ``size``) or declared in the experiment (``imagefolder``).
        folders: the images sit in class folders ``<root>/{train,val}/<class>/``, where they can be counted.
    """

    train_size: int | None = None
    val_size: int | None = None
    num_classes: int | None = None
    keys: tuple[str, str, str] = ("train_size", "val_size", "num_classes")
    folders: bool = False


InfoT = TypeVar("InfoT", bound=Info)


class Invalid(ValueError):
    """A check's verdict on a run's config: the dotted ``key`` at fault and the fix, in ``message``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


@dataclass(frozen=True)
class CheckContext:
    """What a check sees: the entry picked, the run's whole resolved config (sections as dicts), and
    whether files the run reads must exist now (off for plans made on another machine)."""

    name: str
    config: Mapping[str, Any]
    check_files: bool = True


Check = Callable[[CheckContext], None]


class Registry(Generic[T, InfoT]):
    """Maps a config name to a builder returning ``T``, with an info record of type ``InfoT`` per entry.

    Contract: builders take keyword-only arguments (``def build(*, num_classes: int, ...)``) and
    return a ready component. Experiment YAML keys are the parameter names, so the config loader checks
    a section's keys, types, bounds and choices against the signature without building anything; a
    builder that also takes ``**kwargs`` gets any other key of its section passed through as written,
    unchecked.
    """

    def __init__(self, kind: str, info: type[Any] = Info, plural: str | None = None, section: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.section = section or kind  # the experiment file's section that picks an entry: ``aug: {name: deit}``
        self.info_type: type[InfoT] = info
        self._builders: dict[str, Builder] = {}
        self._info: dict[str, InfoT] = {}
        self._checks: list[Check] = []

    def register(self, name: str, info: InfoT | None = None) -> Callable[[Builder], Builder]:
        """Decorator: ``@MODELS.register("deit_tiny_patch16_224", ModelInfo(distilled=False))``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names are non-empty strings, got {name!r}")
        record = self.info_type() if info is None else info
        if not isinstance(record, self.info_type):
            raise TypeError(f"{self.kind} {name!r}: info must be a {self.info_type.__name__}, got {record!r}")

        def decorator(fn: Builder) -> Builder:
            if (previous := self._builders.get(name)) is not None:
                raise RegistryError(
                    f"{self.kind} {name!r} is registered twice: by {_where(previous)} and by {_where(fn)}; "
                    "rename one of them"
                )
            self._builders[name] = fn
            self._info[name] = record
            return fn

        return decorator

    def _entries(self) -> dict[str, Builder]:
        """The builders, once the built-ins and the installed plugins have registered theirs."""
        load_builtins()
        return self._builders

    def get(self, name: str) -> Builder:
        """The builder registered under ``name``; unknown names raise with suggestions."""
        entries = self._entries()
        if isinstance(name, str) and name in entries:
            return entries[name]
        close = difflib.get_close_matches(str(name), entries, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(entries)) or "(none)"
        raise RegistryError(f"unknown {self.kind} {name!r}.{hint} Registered {self.plural}: {known}")

    def build(self, name: str, /, **kwargs: Any) -> T:
        """Call the builder registered under ``name`` with ``kwargs``, once they keep the bounds and
        choices its annotations declare (a ``ValueError`` lists every one they break)."""
        builder = self.get(name)
        markers = {key: constraints(hint)[1] for key, hint in type_hints(builder).items()}
        if found := refusals(markers, kwargs, prefix=f"{self.section}."):
            raise ValueError(f"{self.kind} {name!r}: {'; '.join(found.values())}")
        return builder(**kwargs)  # type: ignore[no-any-return]

    def info(self, name: str) -> InfoT:
        """The typed info record of ``name``; unknown names raise with suggestions."""
        self.get(name)
        return self._info[name]

    def add_check(self, check: Check) -> Check:
        """Decorator: run ``check`` on every run whose config picks an entry of this registry."""
        self._checks.append(check)
        return check

    def check(self, context: CheckContext) -> None:
        """Run the checks on a run's config; the first failing one raises :class:`Invalid`."""
        self.get(context.name)
        for check in self._checks:
            check(context)

    def signature(self, name: str) -> inspect.Signature:
        return inspect.signature(self.get(name))

    def names(self) -> list[str]:
        return sorted(self._entries())

    def __contains__(self, name: object) -> bool:
        return name in self._entries()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


MODELS: Registry[Any, ModelInfo] = Registry("model", ModelInfo)
TEACHERS: Registry[Any, TeacherInfo] = Registry("teacher", TeacherInfo)
LOSSES: Registry[Any, LossInfo] = Registry("loss", LossInfo, "losses")
AUGMENTATIONS: Registry[Any, Info] = Registry("augmentation recipe", Info, section="aug")
DATASETS: Registry[Any, DatasetInfo] = Registry("dataset", DatasetInfo, section="data")
LOGGERS: Registry[Any, Info] = Registry("logger", Info)
#: Launcher backends (research.launch.backends.Backend); ``resources.backend`` picks one.
BACKENDS: Registry[Any, Info] = Registry("launcher backend", Info)

#: Registries by the plural used on the command line (``research list models``).
REGISTRIES: dict[str, Registry[Any, Any]] = {
    "models": MODELS,
    "teachers": TEACHERS,
    "losses": LOSSES,
    "augmentations": AUGMENTATIONS,
    "datasets": DATASETS,
    "loggers": LOGGERS,
    "backends": BACKENDS,
}


def model_img_size(section: Mapping[str, Any]) -> int | None:
    """A ``model:`` section's input resolution: its ``img_size``, else the entry's default."""
    size = section.get("img_size")
    return int(size) if size else MODELS.info(section["name"]).default_img_size
