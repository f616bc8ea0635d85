"""The engine's training loop as the project builds it, for the benchmark to drive.

``research.launch.train.assemble`` builds the run's parts as ``train`` does (data, teacher, model,
objective, optimizer, scheduler, state), so the benchmark measures the engine's real wiring, not a
copy of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from research.config import Run, load_run
from research.engine.fit import Loop
from research.launch.dist import DistEnv
from research.launch.train import assemble
from research.registry import MODELS
from research.teachers import teacher_network

NUM_CLASSES = 10  # CIFAR-10; also used at 224 (the head's size does not matter for speed)


def loop_of(run: Run, device: torch.device | None = None) -> Loop:
    """The :class:`Loop` that :func:`research.launch.train.train` trains ``run`` with, on ``device``
    (default: the one ``train`` picks, a GPU when there is one)."""
    return assemble(run, DistEnv(device=device) if device is not None else None).loop


def build_loop(experiment: dict[str, Any], workdir: Path, device: torch.device | None = None) -> Loop:
    """The :class:`Loop` exactly as ``train`` wires it for ``experiment`` (a config dict, written to
    ``workdir`` as YAML); see :func:`loop_of`."""
    path = workdir / f"{experiment['name']}.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return loop_of(load_run(path), device)


def img_size_of(model: str) -> int:
    return MODELS.info(model).default_img_size or 32


def random_teacher_checkpoint(name: str, path: Path) -> str:
    """Save randomly initialised weights for teacher ``name``; returns the path."""
    torch.save(teacher_network(name, num_classes=NUM_CLASSES).state_dict(), path)
    return str(path)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm attention modules that can switch off ``F.scaled_dot_product_attention`` (``fused_attn``)."""
    return [module for module in model.modules() if isinstance(getattr(module, "fused_attn", None), bool)]


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run timm's attention as explicit ``q @ k^T``, softmax, ``@ v`` (what ``TIMM_FUSED_ATTN=0`` does).

    Same maths (no attention dropout in DeiT); on a CPU the fused kernel's backward is slow in bf16.
    """
    modules = attention_modules(model)
    saved = [module.fused_attn for module in modules]
    for module in modules:
        setattr(module, "fused_attn", False)  # noqa: B010  (a plain attribute on timm's Attention)
    try:
        yield
    finally:
        for module, fused in zip(modules, saved):
            setattr(module, "fused_attn", fused)  # noqa: B010
