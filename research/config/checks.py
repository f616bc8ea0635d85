"""Checks of a run's values against what the schema declares, made when an experiment loads.

Every number of the schema carries its bounds in its annotation (:class:`research.registry.Range`), every
setting with a few values its choices (:class:`research.registry.OneOf`); :func:`check_values` walks the
schema's dataclasses and reports every value out of bounds or choices in one :class:`ConfigError`,
showing the value as the file or the command line gave it. What annotations cannot say is checked here
too: the run dir's path, the values that reach the job's batch script, the optimizer timm looks up only
when training starts, and values timm would take without a word but not use as written.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from research.config.errors import ConfigError
from research.config.schema import ExperimentCfg
from research.registry import BACKENDS, Marker, RegistryError, constraints, refusals

#: The longest experiment or variant name: a folder name (255 bytes on most file systems) with room
#: for the suffix ``--force`` adds when it keeps the old run aside (``.replaced-YYYYmmdd-HHMMSS``).
MAX_NAME = 200

# The experiment's name is also its SLURM job name and its W&B group.
_EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9_.=,+-]+")
_SBATCH_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")  # slurm.extra's keys: --<option>=<value>
# C0 and C1 control characters, DEL, and the line and paragraph separators: in a folder name they
# hide in listings; in the batch script a line break ends the #SBATCH line and starts a shell command.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def control_character(text: str) -> str | None:
    """The first control character of ``text``, escaped (``'\\n'``), or None when it holds none."""
    found = _CONTROL.search(text)
    return repr(found.group())[1:-1] if found else None


def folder_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one folder of a run dir's path, or None: it must be a single, non-empty
    path component (no '/', not '.' or '..') without control characters, and fit a folder name."""
    if name in ("", ".", ".."):
        return "is not a folder name"
    if "/" in name:
        return "cannot contain '/'"
    if (char := control_character(name)) is not None:
        return f"holds the control character {char}"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long; a run's folder name holds at most {MAX_NAME}"
    return None


@functools.cache
def schema_markers(cls: type = ExperimentCfg, prefix: str = "") -> dict[str, tuple[Marker, ...]]:
    """Dotted key -> its bounds and choices, for every field of the schema that declares some, nested sections included."""
    hints = typing.get_type_hints(cls, include_extras=True)
    found: dict[str, tuple[Marker, ...]] = {}
    for item in dataclasses.fields(cls):
        hint, markers = constraints(hints[item.name])
        if dataclasses.is_dataclass(hint):
            found.update(schema_markers(hint, f"{prefix}{item.name}."))  # type: ignore[arg-type]
        elif markers:
            found[f"{prefix}{item.name}"] = markers
    return found


def check_values(raw: Mapping[str, Any], where: Callable[[str], str], given: Callable[[str], Any]) -> None:
    """Raise one :class:`ConfigError` listing every schema value of ``raw`` out of its bounds or choices.

    Args:
        raw: the run's config, as plain dicts.
        where: the file (or 'command line') that set a dotted key.
        given: a dotted key's value as written there (before any conversion), for the message.
    """
    markers = schema_markers()
    found = refusals(markers, {key: _lookup(raw, key) for key in markers}, {key: given(key) for key in markers})
    if found:
        raise ConfigError("; ".join(f"{where(key)}: {refusal}" for key, refusal in found.items()))


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def check_run_dir(output_dir: str, name: str, variant: str, where: Callable[[str], str]) -> None:
    """The run's folder can be made, inside its experiment's dir: the experiment's and the variant's
    names are each one folder name (see :func:`folder_name_problem`), and no file stands on its path."""
    for key, value in (("name", name), ("variant", variant)):
        problem = folder_name_problem(value) if value or key == "name" else None
        if key == "name" and not problem and not _EXPERIMENT_NAME.fullmatch(value):
            problem = "holds other characters"
        if problem:
            shown = f"{value[:40]!r}..." if len(value) > MAX_NAME else repr(value)
            allowed = "letters, digits and _ . = , + -" if key == "name" else "any characters but '/' and control characters"
            raise ConfigError(
                f"{where(key if key == 'name' else 'ablation')}: {key} {shown} {problem}: a {key} is one folder of "
                f"the run dir's path: {allowed}, not '.' or '..'"
            )
    run_dir = user_path(output_dir, "output_dir", where) / name / variant
    try:  # the closest folder on its path that exists (a dangling link counts)
        folder = next((part for part in (run_dir, *run_dir.parents) if part.exists() or part.is_symlink()), None)
    except OSError as exc:  # a part longer than the file system allows, ...
        raise ConfigError(f"{where('output_dir')}: output_dir={output_dir}: cannot use it: {exc.strerror}") from None
    if folder is not None and not folder.is_dir():
        raise ConfigError(
            f"{where('output_dir')}: output_dir={output_dir}: {folder} is a file, not a folder; "
            "choose another output_dir (or name)"
        )


def user_path(text: str, key: str, where: Callable[[str], str]) -> Path:
    """``text`` as a path with ``~`` expanded; a control character (NUL, a line break, ...) or an
    unknown ``~user`` is a ConfigError."""
    if (char := control_character(text)) is not None:
        raise ConfigError(f"{where(key)}: {key} {text!r} holds the control character {char}: remove it")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~user of no user here
        raise ConfigError(f"{where(key)}: {key}={text}: no home directory for {text.split('/')[0]} on this machine") from None


def check_optimizer(optim: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """``optim.name`` is an optimizer timm builds (it reads ``lookahead_adamw`` as adamw with Lookahead);
    ``optim.betas`` two numbers, for an optimizer that takes betas (timm passes them on unread otherwise:
    SGD ignores them, Adam(W) uses the first two of three); ``optim.implementation`` one the optimizer's
    class takes (torch's Adam, AdamW and SGD take foreach and fused)."""
    import timm.optim

    name, betas, choice = str(optim["name"]), optim.get("betas"), optim["implementation"]
    base, known = name.lower().split("_")[-1], [str(opt) for opt in timm.optim.list_optimizers()]  # type: ignore[attr-defined]
    if base not in known:
        close = difflib.get_close_matches(name.lower(), known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (timm.optim.list_optimizers() lists them)"
        raise ConfigError(f"{where('optim.name')}: optim.name: timm has no optimizer {name!r}{hint}")
    if betas is not None and len(betas) != 2:
        raise ConfigError(f"{where('optim.betas')}: optim.betas={list(betas)} holds {len(betas)} values; give two, e.g. [0.9, 0.999]")
    try:  # the class timm's create_optimizer_v2 builds for this name
        opt_class: Any = timm.optim.get_optimizer_class(base, bind_defaults=False)  # type: ignore[attr-defined]
    except (KeyError, ValueError, AssertionError):  # bitsandbytes and APEX optimizers are only found on a GPU
        return
    takes = inspect.signature(opt_class).parameters
    if betas is not None and "betas" not in takes:
        raise ConfigError(
            f"{where('optim.betas')}: optim.betas: optimizer {name!r} takes no betas; they are for Adam-like "
            "optimizers (adamw, adam, nadamw, lamb, lion, adafactor, ...): remove optim.betas or change optim.name"
        )
    keyword = "foreach" if choice == "for_loop" else choice
    if choice != "auto" and keyword not in takes:
        raise ConfigError(
            f"{where('optim.implementation')}: optim.implementation={choice!r}: optimizer {name!r} ({opt_class.__name__}) "
            f"has no {keyword} implementation; use auto, or optim.name adamw, adam or sgd"
        )


def check_warmup(raw: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """A warm-up as long as training never reaches the schedule's peak: the run would stay in it throughout."""
    warmup, epochs = raw["sched"]["warmup_epochs"], raw["train"]["epochs"]
    if warmup >= epochs:
        also = f" ({where('train.epochs')})" if where("train.epochs") != where("sched.warmup_epochs") else ""
        raise ConfigError(
            f"{where('sched.warmup_epochs')}: sched.warmup_epochs={warmup:g} is not shorter than train.epochs={epochs}{also}: "
            "the run would never leave warm-up; lower sched.warmup_epochs (0 = none)"
        )


def check_resources(raw: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """The ``resources:`` and ``slurm:`` values a job gets: a registered backend, a time of at least a
    minute, at least 1 MB of memory, sbatch option names in ``slurm.extra``, and no control character
    anywhere (a line break in an ``#SBATCH`` line ends it: what follows runs as shell, and the lines
    after it are ignored)."""
    resources, slurm = raw["resources"], raw["slurm"]
    try:
        BACKENDS.get(resources["backend"])
    except RegistryError as exc:
        raise ConfigError(f"{where('resources.backend')}: resources.backend: {exc}") from None
    texts = [(f"slurm.{key}", slurm[key]) for key in ("partition", "account", "qos", "constraint")]
    texts += [("resources.gpu_type", resources["gpu_type"])] + [("slurm.setup", line) for line in slurm["setup"]]
    for option, value in slurm["extra"].items():
        if not _SBATCH_OPTION.fullmatch(str(option)):
            raise ConfigError(
                f"{where(f'slurm.extra.{option}')}: slurm.extra: {str(option)!r} is not an sbatch option name "
                "(letters, digits, - and _, as in sbatch --help: reservation, mail-type, ...)"
            )
        texts.append((f"slurm.extra.{option}", value))
    for key, value in texts:
        if value is not None and (char := control_character(str(value))) is not None:
            raise ConfigError(
                f"{where(key)}: {key}={str(value)!r} holds the control character {char}, which would break the job's "
                "batch script: remove it"
            )
    try:
        minutes = slurm_minutes(resources["time"])
    except ValueError:
        raise ConfigError(
            f"{where('resources.time')}: resources.time {resources['time']!r} is not a SLURM time (minutes, HH:MM:SS or D-HH:MM:SS)"
        ) from None
    if minutes == 0:
        raise ConfigError(
            f"{where('resources.time')}: resources.time={resources['time']!r}: SLURM reads a time of 0 as no limit; give at least 1 minute"
        )
    if resources["mem_gb"] is not None and int(resources["mem_gb"] * 1024) < 1:
        raise ConfigError(
            f"{where('resources.mem_gb')}: resources.mem_gb={resources['mem_gb']} is less than 1 MB, and sbatch reads --mem=0 as "
            "all of a node's memory: give at least 0.001 (1 MB), or leave it unset for the cluster's default"
        )


def slurm_minutes(text: str) -> int:
    """A SLURM time spec in minutes, rounded up: ``90``, ``90:30``, ``1:30:00``, ``2-12``, ``2-00:00:00``."""
    text = str(text).strip()
    days, _, rest = text.rpartition("-")
    parts = rest.split(":")
    if (days and not days.isdigit()) or len(parts) > 3 or not all(part.isdigit() for part in parts):
        raise ValueError(text)
    numbers = [int(part) for part in parts]
    if days:  # D-H, D-H:M, D-H:M:S
        numbers += [0] * (3 - len(numbers))
    elif len(numbers) < 3:  # M, M:S
        numbers = [0, *numbers] + [0] * (2 - len(numbers))
    hours, minutes, seconds = numbers
    return int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)
