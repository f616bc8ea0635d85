"""The tiny experiment most tests train, and helpers to write experiment files (importable by name:
``from tiny import TINY``; ``conftest`` is ambiguous once tests/slurm's is loaded too)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

#: The smallest experiment that loads and trains in a second on CPU: synthetic 32x32 images, a nano DeiT.
TINY: dict[str, Any] = {
    "model": {"name": "deit_nano_patch4_32", "img_size": 32},
    "data": {"name": "synthetic", "size": 32},
    "aug": {"name": "none", "simple_crop": True},  # simple_crop: no RandomResizedCrop warning at 32px
    "logger": {"name": "none"},
    "loader": {"batch_size": 16, "workers": 0},
    "train": {"epochs": 1, "progress": False},
    "sched": {"warmup_epochs": 0},
}


def write_yaml(path: Path, content: dict[str, Any] | str) -> Path:
    """Write ``content`` (a dict, or YAML text as is) to ``path``, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return path


def deep_update(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out
