"""Which config keys change what a run trains, and which only say where and how it runs.

Two rules read these lists:

* A run dir is its config (:mod:`research.launch.run_check`): a relaunch, resume or skip whose
  config differs from the run dir's ``config.yaml`` in a key that changes training is refused. Keys
  listed in :data:`EXECUTION` may change between the lives of a run; each change is recorded in
  ``lives.jsonl``. ``train.epochs`` may grow (an extended run); it may not shrink.
* Command-line overrides of the :data:`LINKED` keys also apply to the runs an experiment links
  (``teacher.from_experiment``, ``finetune.from_experiment``), so a partition, an output dir, a
  logger or the data's location given for a student reaches its teacher: both read the same data.

A key is named by its dotted path; a section name (``resources``) covers every key under it.

Keys that moved keep working under their old name (:data:`RENAMED`): each experiment file, variant and
command line has them moved to their new place before the layers merge, with a warning.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from research.config.errors import ConfigError
from research.config.schema import BACKEND_SECTIONS

log = logging.getLogger(__name__)

#: Where and how a run runs; every launcher backend's own section is one (research.config.schema.BACKEND_SECTIONS).
PLACEMENT = ("output_dir", "logger", "resources", *BACKEND_SECTIONS)

#: Old name -> new name. The resources of a run were SLURM's until other launcher backends came.
RENAMED = {
    f"slurm.{key}": f"resources.{key}"
    for key in ("time", "nodes", "gpus_per_node", "gpu_type", "tasks_per_node", "cpus_per_task", "mem_gb")
}

#: Where the data is: a teacher and its student read the same data, wherever the command line puts it.
#: Not execution keys: another archive or root may hold other images.
DATA_LOCATION = ("data.archive", "data.root", "data.cache_dir")

#: Command-line overrides of these reach linked teacher and fine-tune runs.
LINKED = (*PLACEMENT, *DATA_LOCATION)

#: Keys that change how a run executes, not what it computes (or only its record's wording). Beyond
#: these, the provenance that ``config.yaml`` holds (git, versions) is compared by nobody: code moves on.
EXECUTION = (
    *PLACEMENT,
    "description",
    "plugins",
    "job_type",
    "run_name",
    "is_baseline",  # the ablation's baseline, for research report; --only does not change it
    "seeds",  # how many seeds the launch made; each run's own is `seed`
    "git",
    "versions",
    "schedules",  # the lr schedules a grown run trained with (research/launch/train.py)
    "teacher.from_experiment",  # the file that named the teacher; teacher.checkpoint is compared
    "finetune.from_experiment",
    "train.resume",
    "train.progress",
    "train.threads",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_s",
    "train.compile",
    "train.compile_mode",
    "train.fused_attention",
    "train.channels_last",
    "loader.workers",  # each image's draws are seeded by its place in the epoch, not by its worker
    "loader.pin_memory",
    "loader.eval_batch_size",
    "optim.implementation",
)

#: Keys that may grow between lives (never shrink).
EXTENSIBLE = ("train.epochs",)


def covered(key: str, names: Iterable[str]) -> bool:
    """Whether dotted ``key`` is one of ``names`` or lies under one of them."""
    return any(key == name or key.startswith(f"{name}.") for name in names)


def is_linked_override(item: str) -> bool:
    """Whether a ``dotted.key=value`` (or ``~dotted.key``) override sets a :data:`LINKED` key."""
    key = item.partition("=")[0].strip().lstrip("~")
    return covered(key, LINKED)


def training_changes(
    saved: Mapping[str, Any], new: Mapping[str, Any], *, sections: Iterable[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, new value)}`` for the flattened keys that change training.

    A fixed-schema key the saved record lacks is left out: it was added to the schema after the run
    started, and its default is the behaviour the run had. Inside the component ``sections`` (which
    hold the builder's keys, defaults filled in) a key on one side only is a change.
    """
    changes = {}
    component = tuple(sections)
    for key in sorted(set(saved) | set(new)):
        if covered(key, EXECUTION) or (key not in saved and not covered(key, component)):
            continue
        old, value = saved.get(key, "<unset>"), new.get(key, "<unset>")
        if old != value:
            changes[key] = (old, value)
    return changes


def execution_changes(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The :data:`EXECUTION` keys (provenance aside) whose value differs: a life records them."""
    return {
        key: (saved.get(key), new.get(key))
        for key in sorted(set(saved) | set(new))
        if covered(key, EXECUTION) and not covered(key, ("git", "versions", "run_name", "schedules")) and saved.get(key) != new.get(key)
    }


def move_renamed(tree: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``tree`` (one file's keys, a variant's, the command line's; nested) with each old key of
    :data:`RENAMED` moved to its new name, with a warning; a tree that sets both names is refused."""
    moved = copy.deepcopy(dict(tree))
    for old, new in RENAMED.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section, target = moved.get(old_section), moved.setdefault(new_section, {})
        if not isinstance(section, dict) or old_key not in section or not isinstance(target, dict):
            continue  # a section of the wrong type is the schema's to report
        if new_key in target:
            raise ConfigError(f"{source}: sets both {old} and {new}: {old} is the old name of {new}; keep {new} only")
        target[new_key] = section.pop(old_key)
        renamed_key(old, source)
    return {key: value for key, value in moved.items() if value != {} or key in tree}


@functools.cache
def renamed_key(old: str, source: str) -> str:
    """The new name of ``old``, saying once per source that it was renamed."""
    log.warning("%s: %s is now %s; the old name still works, rename it", source, old, RENAMED[old])
    return RENAMED[old]
