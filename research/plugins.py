"""Third-party components: modules named in an experiment's ``plugins:`` list, and installed
distributions that declare an entry point in the ``research.plugins`` group.

A plugin registers its components by importing ``research.registry`` and decorating its builders.
A plugin that fails to import stops the run: a silently skipped plugin would make a YAML name
"unknown" far from the real cause.

Plugin modules are also looked up in the launch folder (the current directory), as ``python -m``
would: ``plugins: [mylab.models]`` finds ``./mylab/models.py`` from ``research``, ``launchers/*.py``
and, through the code snapshot, inside a SLURM job.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable

ENTRY_POINT_GROUP = "research.plugins"


class PluginError(ImportError):
    """A plugin module or entry point could not be imported."""


# The subpackages whose import registers the built-in components (each __init__ imports its modules).
BUILTINS = (
    "research.data", "research.losses", "research.models", "research.teachers", "research.tracking", "research.launch.backends"
)
_builtins_loaded = False


def load_builtins() -> None:
    """Register the built-in components, then those of the installed plugins' entry points; once.

    Every registry lookup calls it; not ``import research``: the built-ins import torch and timm
    (seconds), which a command that only parses its arguments (``--help``) does not need.
    """
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # first: a lookup made by a module imported here sees what is registered so far
    try:
        for module in BUILTINS:
            importlib.import_module(module)
        load_entry_point_plugins()
    except BaseException:
        _builtins_loaded = False  # the next lookup fails again, rather than see half the registry
        raise


def load_entry_point_plugins() -> list[str]:
    """Import every ``research.plugins`` entry point of the installed distributions, once each."""
    import importlib.metadata  # 20 ms: not on ``import research``

    loaded = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as exc:
            raise PluginError(
                f"plugin entry point {entry_point.name!r} ({entry_point.value}) failed to import: {exc}; "
                "fix or uninstall the distribution that declares it"
            ) from exc
        loaded.append(entry_point.value)
    return loaded


def import_plugins(modules: Iterable[str], *, where: str = "plugins") -> None:
    """Import the modules an experiment lists under ``plugins:`` (importing twice is a no-op), after
    the built-ins (:func:`load_builtins`), so that a plugin reusing a built-in name is the one refused,
    here, naming its module: the config loader calls this before it reads any name."""
    load_builtins()
    launch_folder = os.getcwd()
    if not any(entry in ("", ".", launch_folder) for entry in sys.path):
        # After the installed packages: a folder of the launch dir never shadows one of them.
        sys.path.append(launch_folder)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise PluginError(f"{where}: cannot import plugin module {module!r}: {exc}") from exc
