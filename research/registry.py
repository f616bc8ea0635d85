"""Name -> builder registries, one per extension point.

A builder is a plain callable with keyword-only arguments that returns the component. Experiment YAML
keys are the builder's parameter names, so :func:`Registry.signature` lets the config loader check a
section's keys against the builder without building anything.

Names are explicit strings (never ``fn.__name__``): renaming a function must not break experiment files.
A duplicate name raises at registration and names both places; an unknown name raises
:class:`RegistryError` (a ``KeyError``) listing the closest known names.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Builder = Callable[..., Any]

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "LOGGERS",
    "LOSSES",
    "MODELS",
    "TEACHERS",
    "REGISTRIES",
    "Registry",
    "RegistryError",
]


class RegistryError(KeyError):
    """An unknown or duplicate registry name. ``str()`` gives the plain message (KeyError quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _where(fn: Builder) -> str:
    module = getattr(fn, "__module__", "?")
    qualname = getattr(fn, "__qualname__", repr(fn))
    return f"{module}.{qualname}"


class Registry(Generic[T]):
    """Maps a config name to a builder returning ``T``.

    Contract: builders take keyword-only arguments (``def build(*, num_classes: int, ...)``) and
    return a ready component. Optional metadata given at registration (``distilled=True``) describes
    a component without building it, so config validation can use it.
    """

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._builders: dict[str, Builder] = {}
        self._metadata: dict[str, Mapping[str, Any]] = {}

    def register(self, name: str, **metadata: Any) -> Callable[[Builder], Builder]:
        """Decorator: ``@MODELS.register("deit_tiny_patch16_224", distilled=False)``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names are non-empty strings, got {name!r}")

        def decorator(fn: Builder) -> Builder:
            previous = self._builders.get(name)
            if previous is not None:
                raise RegistryError(
                    f"{self.kind} {name!r} is registered twice: by {_where(previous)} and by {_where(fn)}; "
                    "rename one of them"
                )
            self._builders[name] = fn
            self._metadata[name] = MappingProxyType(dict(metadata))
            return fn

        return decorator

    def get(self, name: str) -> Builder:
        """The builder registered under ``name``; unknown names raise with suggestions."""
        try:
            return self._builders[name]
        except (KeyError, TypeError):
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        close = difflib.get_close_matches(str(name), self._builders, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._builders)) or "(none)"
        return f"unknown {self.kind} {name!r}.{hint} Registered {self.plural}: {known}"

    def build(self, name: str, /, **kwargs: Any) -> T:
        """Call the builder registered under ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)  # type: ignore[no-any-return]

    def metadata(self, name: str) -> Mapping[str, Any]:
        self.get(name)
        return self._metadata[name]

    def signature(self, name: str) -> inspect.Signature:
        return inspect.signature(self.get(name))

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._builders)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


MODELS: Registry[Any] = Registry("model")
TEACHERS: Registry[Any] = Registry("teacher")
LOSSES: Registry[Any] = Registry("loss", "losses")
AUGMENTATIONS: Registry[Any] = Registry("augmentation recipe")
DATASETS: Registry[Any] = Registry("dataset")
LOGGERS: Registry[Any] = Registry("logger")

#: Registries by the plural used on the command line (``research list models``).
REGISTRIES: dict[str, Registry[Any]] = {
    "models": MODELS,
    "teachers": TEACHERS,
    "losses": LOSSES,
    "augmentations": AUGMENTATIONS,
    "datasets": DATASETS,
    "loggers": LOGGERS,
}
