"""The engine's training loop as the project builds it, for the benchmark to drive.

``research.launch.train.train`` runs up to its ``on_loop`` hook (data, teacher, model, objective,
optimizer, scheduler, state all built by the project's code) and is stopped there, so the
benchmark measures the engine's real wiring, not a copy of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
import yaml
from torch import nn

from research.config import Run, load_run
from research.engine.fit import Loop
from research.launch.dist import DistEnv
from research.launch.train import train
from research.registry import MODELS, TEACHERS

NUM_CLASSES = 10  # CIFAR-10; also used at 224 (the head's size does not matter for speed)


class _Built(Exception):
    """Raised by the ``on_loop`` hook to stop :func:`train` once the loop is built, before ``fit``."""

    def __init__(self, loop: Loop) -> None:
        super().__init__("loop built")
        self.loop = loop


def loop_of(run: Run, device: torch.device | None = None) -> Loop:
    """The :class:`Loop` that :func:`research.launch.train.train` builds for ``run``, on ``device``
    (default: the one ``train`` picks, a GPU when there is one)."""

    def stop(loop: Loop) -> None:
        raise _Built(loop)

    try:
        train(run, env=DistEnv(device=device) if device is not None else None, on_loop=stop)
    except _Built as built:
        built.loop.state.model.train()
        return built.loop
    raise RuntimeError("research.launch.train.train returned without calling on_loop")


def build_loop(experiment: dict[str, Any], workdir: Path, device: torch.device | None = None) -> Loop:
    """The :class:`Loop` exactly as ``train`` wires it for ``experiment`` (a config dict, written to
    ``workdir`` as YAML); see :func:`loop_of`."""
    path = workdir / f"{experiment['name']}.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return loop_of(load_run(path), device)


def img_size_of(model: str) -> int:
    return MODELS.info(model).default_img_size or 32


def teacher_network(name: str) -> nn.Module:
    """A randomly initialised network of teacher ``name``'s architecture (speed does not depend on weights)."""
    info = TEACHERS.info(name)
    arch = info.arch
    if arch is None:
        raise SystemExit(f"--teacher {name}: needs an 'arch' to build random weights; pick e.g. resnet18_cifar")
    if info.source == "research":
        return MODELS.build(arch, num_classes=NUM_CLASSES)
    return timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES)


def random_teacher_checkpoint(name: str, path: Path) -> str:
    """Save randomly initialised weights for teacher ``name``; returns the path."""
    torch.save(teacher_network(name).state_dict(), path)
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
