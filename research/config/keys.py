"""Which config keys change what a run trains, and which only say where and how it runs.

Two rules read these lists:

* A run dir is its config (:mod:`research.launch.run_check`): a relaunch, resume or skip whose
  config differs from the run dir's ``config.yaml`` in a key that changes training is refused. Keys
  listed in :data:`EXECUTION` may change between the lives of a run; each change is recorded in
  ``lives.jsonl``. ``train.epochs`` may grow (an extended run); it may not shrink.
* Command-line overrides of the :data:`LINKED` keys also apply to the runs an experiment links
  (``teacher.from_experiment``, ``finetune.from_experiment``), so a partition, an output dir, a
  logger or the data's location given for a student reaches its teacher: both read the same data.

A key is named by its dotted path; a section name (``slurm``) covers every key under it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Where and how a run runs: command-line overrides of these reach linked teacher and fine-tune runs.
PLACEMENT = ("output_dir", "slurm", "logger")

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
