"""How fast DeiT trains on this machine, and what limits it.

One process, one run, printed as a table (and written as JSON with ``--out``):

* **ceiling**: the peak ``torch.mm`` rate in fp32 and bf16, the most any training step can reach;
* **train step**: images/s of the engine's :func:`research.engine.fit.train_step` on a ``Loop`` built by
  :func:`research.launch.train.train` itself (synthetic tensors already in memory, data excluded), the
  model's FLOPs per image, hence the fraction of the ceiling reached;
* **engine vs reference**: the same model, loss and optimizer stepped by a plain loop written the way
  the reference ``train_one_epoch`` (facebookresearch/deit, ``engine.py``) does it; interleaved blocks,
  medians, so the ratio survives a noisy machine;
* **attention**: the engine step with timm's non-fused attention (``fused_attn=False``), against the
  fused ``F.scaled_dot_product_attention`` kernel whose backward is slow on this CPU in bf16;
* **distillation**: the step with the teacher (hard distillation) against without, next to the
  teacher's share of the FLOPs;
* **data**: images/s of the recipe's per-image PIL pipeline in one worker process and through a
  ``DataLoader`` with 1 and 2 workers, against the step rate;
* ``--profile``: the engine step's self CPU time by aten op (torch.profiler);
* ``--epoch``: one CIFAR-10 epoch end to end (data, teacher, student, eval, checkpoint) through the
  project's engine with its fast settings, against the reference way (JPEG decoding every epoch, fp32).

Usage (from the repository root; see docs/PERFORMANCE.md for the numbers)::

    python bench/throughput.py                                  # deit_micro_distilled_patch4_32, ~4 min
    python bench/throughput.py --model deit_tiny_distilled_patch16_224 --batch 32 --teacher none
    python bench/throughput.py --epoch --epoch-fused-attention  # adds CIFAR epochs on 5000 images, ~2.5 min more
    python bench/throughput.py --tiny --out /tmp/bench.json     # CI smoke: seconds
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
import yaml
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import accuracy
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import research  # noqa: F401  (registers the built-in components)
from research.config import Run, load_run
from research.data import RepeatedAugSampler
from research.engine.fit import Loop, train_step
from research.launch import train as train_module
from research.launch.train import train
from research.registry import AUGMENTATIONS, DATASETS, MODELS, TEACHERS

ROOT = Path(__file__).resolve().parent.parent
CIFAR_EXPERIMENT = ROOT / "experiments" / "base" / "cifar10.yaml"
NUM_CLASSES = 10  # CIFAR-10; also used at 224 (the head's size does not matter for speed)
THREADS = 2  # the machine's cores; DataLoader workers use one thread each


# ---------------------------------------------------------------------------------------------------
# Settings


@dataclass
class Settings:
    """What to measure; one field per command-line option."""

    model: str = "deit_micro_distilled_patch4_32"
    teacher: str = "resnet18_cifar"  # "none": no distillation measurement
    batch: int = 128
    precision: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    repeats: int = 9  # interleaved timing rounds per measurement; medians are reported
    warmup: int = 1  # untimed steps of each kind before the rounds
    steps: int = 2  # optimizer steps per timed block (short blocks: neighbours' bursts hit fewer pairs)
    matmul_size: int = 2048
    data: str = "auto"  # cifar10_jpeg | synthetic | auto (cifar10_jpeg at 32 px, synthetic above)
    archive: str = "../shared/data/cifar10-jpeg.tar.xz"
    data_images: int = 600  # images per timed block of the augmentation pipeline
    loader_batches: int = 6  # timed batches per DataLoader measurement
    profile: bool = False  # also profile the engine step: where the time goes, by aten op
    epoch: bool = False
    epoch_images: int = 5000
    epoch_precision: str = "auto"  # auto: the precision of experiments/base/cifar10.yaml
    # DataLoader workers of each side's epoch. 0 is the fastest setting for both on 2 cores (the
    # engine's recipe, base/cifar10.yaml, sets it; the reference's epoch measured 36.3 / 39.3 / 40.1 s
    # at 0 / 1 / 2 workers, docs/PERFORMANCE.md): a worker stalls the step's two threads.
    epoch_workers: int = 0
    epoch_reference_workers: int = 0
    epoch_fused_attention: bool = False  # also time the engine's epoch with train.fused_attention=true
    epoch_rounds: int = 1  # engine and reference epochs, alternating which goes first; ratios are medians
    compile: bool = False  # also time the engine step with train.compile (torch.compile, non-fused attention)
    out: str | None = None
    tiny: bool = False

    def shrink(self) -> None:
        """Small settings for a CI smoke run: a nano DeiT, a narrow teacher, a few steps and images."""
        self.model, self.teacher, self.batch = "deit_nano_distilled_patch4_32", "resnet10_cifar", 16
        self.repeats, self.warmup, self.steps = 2, 1, 2
        self.matmul_size, self.data, self.data_images, self.loader_batches = 256, "synthetic", 32, 2
        self.epoch_images = 64


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=defaults.model, help="MODELS name of the student (default: %(default)s)")
    parser.add_argument("--teacher", default=defaults.teacher, help="TEACHERS name, or 'none' (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=defaults.precision)
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed blocks per measurement (medians)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed steps before timing")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="steps per timed block")
    parser.add_argument("--matmul-size", type=int, default=defaults.matmul_size)
    parser.add_argument("--data", choices=["auto", "cifar10_jpeg", "synthetic"], default=defaults.data)
    parser.add_argument("--archive", default=defaults.archive, help="CIFAR-10 JPEG archive (data.archive)")
    parser.add_argument("--data-images", type=int, default=defaults.data_images)
    parser.add_argument("--loader-batches", type=int, default=defaults.loader_batches)
    parser.add_argument("--profile", action="store_true", help="also profile the engine step by aten op (torch.profiler)")
    parser.add_argument("--epoch", action="store_true", help="also time one CIFAR epoch end to end, engine vs reference")
    parser.add_argument("--epoch-images", type=int, default=defaults.epoch_images, help="training images of that epoch")
    parser.add_argument("--epoch-precision", choices=["auto", "fp32", "bf16"], default=defaults.epoch_precision)
    parser.add_argument(
        "--epoch-workers",
        type=int,
        default=defaults.epoch_workers,
        help="the engine epoch's DataLoader workers (default: %(default)s)",
    )
    parser.add_argument(
        "--epoch-reference-workers",
        type=int,
        default=defaults.epoch_reference_workers,
        help="the reference epoch's DataLoader workers (default: %(default)s)",
    )
    parser.add_argument(
        "--epoch-rounds",
        type=int,
        default=defaults.epoch_rounds,
        help="rounds of (engine epoch, reference epoch), alternating which goes first; ratios are per-round medians",
    )
    parser.add_argument(
        "--epoch-fused-attention",
        action="store_true",
        help="also time the engine's epoch with train.fused_attention=true (the recipe runs it non-fused)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time the engine step with train.compile (compiles first: ~1 min)"
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--tiny", action="store_true", help="CI smoke settings (seconds); replaces model, teacher, batch, rounds and sizes"
    )
    args = parser.parse_args(argv)
    settings = Settings(**{key.replace("-", "_"): value for key, value in vars(args).items()})
    if settings.tiny:
        settings.shrink()
    for key in ("batch", "repeats", "steps", "matmul_size", "data_images", "loader_batches", "epoch_images", "epoch_rounds"):
        if getattr(settings, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    for key in ("epoch_workers", "epoch_reference_workers"):
        if getattr(settings, key) < 0:
            parser.error(f"--{key.replace('_', '-')} must be >= 0")
    if settings.batch % 2:
        parser.error(f"--batch {settings.batch}: Mixup/CutMix pair images within a batch; give an even batch")
    return settings


# ---------------------------------------------------------------------------------------------------
# Timing helpers


def _progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def _load() -> float:
    return os.getloadavg()[0]


@dataclass
class Timings:
    """Per block kind, one entry per round: wall seconds, and the share of the machine this process
    got (its CPU time / (wall time x torch threads)); well below 1 means neighbours took cores."""

    seconds: dict[str, list[float]]
    cpu_share: dict[str, list[float]]


def interleaved(blocks: dict[str, Callable[[], Any]], *, repeats: int) -> Timings:
    """Time each block once per round, ``repeats`` rounds, the order reversed every other round.

    Interleaving spreads a neighbour's burst of load over every kind instead of one, and blocks that
    run back to back see nearly the same load, so per-round ratios are far steadier than the rates.
    """
    timings = Timings({name: [] for name in blocks}, {name: [] for name in blocks})
    names = list(blocks)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            gc.collect()
            cpu, started = time.process_time(), time.perf_counter()
            blocks[name]()
            wall = time.perf_counter() - started
            timings.seconds[name].append(wall)
            timings.cpu_share[name].append((time.process_time() - cpu) / (wall * torch.get_num_threads()))
    return timings


def _repeat(step: Callable[[], Any], count: int) -> Callable[[], None]:
    def block() -> None:
        for _ in range(count):
            step()

    return block


def _median_rate(seconds: list[float], items: int) -> float:
    return items / statistics.median(seconds)


# ---------------------------------------------------------------------------------------------------
# The ceiling and FLOPs


def matmul_block(dtype: torch.dtype, *, size: int) -> tuple[Callable[[], Any], float]:
    """A timed block for the ceiling: one ``size`` x ``size`` square ``torch.mm``, and its FLOPs (2 n^3).

    It runs in the same interleaved rounds as the train steps, so the ceiling sees the same
    neighbours' load as the steps it is compared with.
    """
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # first call: oneDNN / MKL kernel selection and page faults
    return (lambda: torch.mm(a, b)), 2.0 * size**3


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def forward_flops(model: nn.Module, images: torch.Tensor) -> float:
    """FLOPs of one forward pass per image (matmuls, convolutions, attention), in the model's current mode.

    torch's counter knows the GPU attention kernels but not the CPU one timm's ViT reaches through
    ``F.scaled_dot_product_attention``; it is mapped to the same formula, else attention (5-14% of a
    DeiT's FLOPs here) would be missing.
    """
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(images)
    return counter.get_total_flops() / images.shape[0]


# ---------------------------------------------------------------------------------------------------
# Engine loops, built by the project's own pipeline


class _Built(Exception):
    """Raised by the ``on_loop`` hook to stop :func:`train` once the loop is built, before ``fit``."""

    def __init__(self, loop: Loop) -> None:
        super().__init__("loop built")
        self.loop = loop


def random_teacher_checkpoint(name: str, path: Path) -> str:
    """Save randomly initialised weights for teacher ``name`` (speed does not depend on the weights)."""
    meta = TEACHERS.metadata(name)
    arch = meta.get("arch")
    if arch is None:
        raise SystemExit(f"--teacher {name}: needs an 'arch' to build random weights; pick e.g. resnet18_cifar")
    if meta.get("source") == "research":
        net = MODELS.build(arch, num_classes=NUM_CLASSES)
    else:
        net = timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES)
    torch.save(net.state_dict(), path)
    return str(path)


def img_size_of(model: str) -> int:
    return int(MODELS.metadata(model).get("default_img_size", 32))


def bench_experiment(
    settings: Settings, *, precision: str, teacher_checkpoint: str | None, workdir: Path, compiled: bool = False
) -> dict[str, Any]:
    """The experiment a step measurement runs: the DeiT recipe (schema defaults: AdamW 5e-4, wd 0.05,
    cosine, label smoothing 0.1) with ``cifar`` augmentation at 32 px or ``deit`` above, synthetic data."""
    size = img_size_of(settings.model)
    distil = teacher_checkpoint is not None
    return {
        "name": f"bench_{precision}_{'distilled' if distil else 'plain'}{'_compiled' if compiled else ''}",
        "output_dir": str(workdir / "runs"),
        "model": {"name": settings.model, "img_size": size},
        "data": {"name": "synthetic", "size": settings.batch, "img_size": size, "num_classes": NUM_CLASSES},
        "aug": {"name": "cifar" if size <= 32 else "deit"},
        "loss": {"name": "hard" if distil else "none"},
        **({"teacher": {"name": settings.teacher, "checkpoint": teacher_checkpoint}} if distil else {}),
        "logger": {"name": "none"},
        "loader": {"batch_size": settings.batch, "workers": 0},
        "train": {"epochs": 1, "precision": precision, "progress": False}
        | ({"compile": True, "fused_attention": False} if compiled else {}),
    }


def build_loop(experiment: dict[str, Any], workdir: Path) -> Loop:
    """The :class:`Loop` exactly as :func:`research.launch.train.train` wires it for ``experiment``
    (a config dict, written to ``workdir`` as YAML); see :func:`loop_of`."""
    path = workdir / f"{experiment['name']}.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return loop_of(load_run(path))


def loop_of(run: Run) -> Loop:
    """The :class:`Loop` that :func:`research.launch.train.train` builds for ``run``.

    ``train`` is run up to its ``on_loop`` hook (data, teacher, model, objective, optimizer,
    scheduler, state all built by the project's code) and stopped there, so the benchmark measures
    the engine's real wiring, not a copy of it.
    """

    def stop(loop: Loop) -> None:
        raise _Built(loop)

    try:
        train(run, on_loop=stop)
    except _Built as built:
        built.loop.state.model.train()
        return built.loop
    raise RuntimeError("research.launch.train.train returned without calling on_loop")


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm attention modules that can switch off ``F.scaled_dot_product_attention`` (``fused_attn``)."""
    return [module for module in model.modules() if isinstance(getattr(module, "fused_attn", None), bool)]


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run timm's attention as explicit ``q @ k^T``, softmax, ``@ v`` (what ``TIMM_FUSED_ATTN=0`` does).

    Same maths (no attention dropout in DeiT); on this CPU the fused kernel's backward is slow in bf16.
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


# ---------------------------------------------------------------------------------------------------
# The reference loop (facebookresearch/deit engine.py, train_one_epoch), written from its description


class ReferenceLoss(nn.Module):
    """The reference ``DistillationLoss`` for ``--distillation-type none | hard``.

    ``teacher`` is the raw network in eval mode (no wrapper), called under ``torch.no_grad`` as the
    reference does.
    """

    def __init__(self, base_criterion: nn.Module, teacher: nn.Module | None, alpha: float = 0.5) -> None:
        super().__init__()
        self.base_criterion, self.teacher, self.alpha = base_criterion, teacher, alpha

    def forward(self, inputs: torch.Tensor, outputs: Any, labels: torch.Tensor) -> torch.Tensor:
        outputs_kd = None
        if not isinstance(outputs, torch.Tensor):
            outputs, outputs_kd = outputs  # (B, C) class head, (B, C) distillation head
        base_loss = self.base_criterion(outputs, labels)
        if self.teacher is None:
            return base_loss
        if outputs_kd is None:
            raise ValueError("hard distillation needs a distilled student returning (class_logits, dist_logits)")
        with torch.no_grad():
            teacher_outputs = self.teacher(inputs)  # (B, C)
        distillation_loss = F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
        return base_loss * (1 - self.alpha) + distillation_loss * self.alpha


def _reference_autocast(precision: str) -> contextlib.AbstractContextManager[Any]:
    # The reference wraps the step in torch.cuda.amp.autocast(), a no-op on a CPU (fp32); at bf16 the
    # comparison is made at equal settings, with CPU bf16 autocast.
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def reference_step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    mixup_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
    samples: torch.Tensor,
    targets: torch.Tensor,
    precision: str,
) -> float:
    """One iteration of the reference ``train_one_epoch`` on a CPU; returns the loss value.

    The reference's ``NativeScaler`` wraps a CUDA ``GradScaler``, which is disabled without a GPU, so
    its call is a plain ``backward()`` and ``optimizer.step()``; the learning rate moves per epoch.
    """
    if mixup_fn is not None:
        samples, targets = mixup_fn(samples, targets)
    with _reference_autocast(precision):
        outputs = model(samples)
        loss = criterion(samples, outputs, targets)
    loss_value = loss.item()  # every step, as the reference logs it
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"reference loop: loss is {loss_value}")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss_value


def reference_loss_for(loop: Loop) -> ReferenceLoss:
    """The reference criterion over the same base criterion and teacher network as ``loop``'s objective."""
    objective = loop.objective
    teacher = getattr(objective, "teacher", None)
    base_criterion = getattr(objective, "base_criterion")  # noqa: B009  (not part of the engine's Objective protocol)
    return ReferenceLoss(base_criterion, getattr(teacher, "net", teacher), getattr(objective, "alpha", 0.5))


# ---------------------------------------------------------------------------------------------------
# Step measurements


_GEMM_OPS = re.compile(r"mm|conv|attention")  # addmm, mm, bmm, (mkldnn_)convolution(_backward), sdpa, their backward


def profile_step(step: Callable[[], Any], *, steps: int, top: int = 8) -> dict[str, Any]:
    """Self CPU time per aten op over ``steps`` calls of ``step``: the heaviest ops, and the share of
    matrix products (matmuls, convolutions, attention) against everything else (norms, activations,
    casts, the optimizer, Python)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    ops = [(event.key, event.self_cpu_time_total / 1e3 / steps) for event in profiler.key_averages()]  # ms per step
    total = sum(ms for _, ms in ops)
    gemm = sum(ms for name, ms in ops if _GEMM_OPS.search(name))
    heaviest = sorted(ops, key=lambda op: -op[1])[:top]
    return {
        "profiled_ms_per_step": total,
        "gemm_share": gemm / total,
        "top_ops": [{"op": name, "ms_per_step": ms, "share": ms / total} for name, ms in heaviest],
    }


@dataclass
class StepResult:
    """One precision's step measurements. Rates are medians over rounds; ``*_over_reference`` are
    medians of the per-round ratios (engine and reference run back to back in each round)."""

    precision: str
    ceiling_gflop_s: float
    engine_img_s: float
    reference_img_s: float
    engine_over_reference: float
    engine_gflop_s: float
    ceiling_fraction: float
    eager_attention_img_s: float | None = None  # the engine step with timm's non-fused attention
    eager_attention_speedup: float | None = None  # median per-round ratio against the engine step
    compiled_img_s: float | None = None  # the engine step with torch.compile (and non-fused attention)
    compiled_speedup: float | None = None  # median per-round ratio against the non-fused eager step
    distilled_img_s: float | None = None
    reference_distilled_img_s: float | None = None
    distilled_engine_over_reference: float | None = None
    teacher_time_share: float | None = None  # 1 - rate with teacher / rate without
    teacher_flop_share: float | None = None  # teacher forward / (3 x student forward + teacher forward)
    distilled_gflop_s: float | None = None
    distilled_ceiling_fraction: float | None = None
    cpu_share: float = 1.0  # median share of the machine the process got while timing (see Timings)
    best_img_s: dict[str, float] = field(default_factory=dict)  # from the fastest round of each kind
    block_seconds: dict[str, list[float]] = field(default_factory=dict)  # raw timings, per round
    block_cpu_share: dict[str, list[float]] = field(default_factory=dict)
    profile: dict[str, Any] | None = None  # with --profile: see profile_step


def _paired_ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """Median over rounds of time(slow) / time(fast): a rate ratio fast/slow robust to load drifts."""
    return statistics.median(s / f for s, f in zip(times[slow], times[fast]))


def measure_steps(
    settings: Settings, *, precision: str, teacher_checkpoint: str | None, flops: dict[str, float], workdir: Path
) -> StepResult:
    """Ceiling, engine and reference steps (and both with the teacher), in interleaved rounds."""
    size = img_size_of(settings.model)
    plain = build_loop(bench_experiment(settings, precision=precision, teacher_checkpoint=None, workdir=workdir), workdir)
    distilled = None
    if teacher_checkpoint is not None:
        experiment = bench_experiment(settings, precision=precision, teacher_checkpoint=teacher_checkpoint, workdir=workdir)
        distilled = build_loop(experiment, workdir)
    images = torch.randn(settings.batch, 3, size, size)  # (B, 3, H, W), already normalised
    targets = torch.randint(0, NUM_CLASSES, (settings.batch,))

    def engine(loop: Loop) -> Callable[[], Any]:
        return lambda: train_step(loop, images, targets)

    def reference(loop: Loop) -> Callable[[], Any]:
        criterion = reference_loss_for(loop)
        state, mix = loop.state, loop.data.mix
        return lambda: reference_step(state.model, criterion, state.optimizer, mix, images, targets, precision)

    steps = {"engine": engine(plain), "reference": reference(plain)}
    if any(module.fused_attn for module in attention_modules(plain.state.model)):

        def engine_eager() -> None:
            with eager_attention(plain.state.model):
                train_step(plain, images, targets)

        steps["engine_eager_attention"] = engine_eager
    if settings.compile:
        experiment = bench_experiment(settings, precision=precision, teacher_checkpoint=None, workdir=workdir, compiled=True)
        steps["engine_compiled"] = engine(build_loop(experiment, workdir))
    if distilled is not None:
        steps["engine_distilled"] = engine(distilled)
        steps["reference_distilled"] = reference(distilled)
    for step in steps.values():  # warm-up: allocator, oneDNN primitive caches, optimizer state
        for _ in range(settings.warmup):
            step()
    matmul, matmul_flops = matmul_block(torch.bfloat16 if precision == "bf16" else torch.float32, size=settings.matmul_size)
    blocks = {"matmul": matmul, **{name: _repeat(step, settings.steps) for name, step in steps.items()}}
    _progress(f"{precision}: {settings.repeats} rounds of torch.mm and {settings.steps} steps of {', '.join(steps)}")
    timings = interleaved(blocks, repeats=settings.repeats)
    times = timings.seconds

    ceiling = matmul_flops / statistics.median(times["matmul"]) / 1e9
    per_block = settings.steps * settings.batch
    rate = {name: _median_rate(times[name], per_block) for name in steps}
    step_flops = 3 * flops["student"]  # forward + backward (about 2x the forward)
    result = StepResult(
        precision=precision,
        ceiling_gflop_s=ceiling,
        engine_img_s=rate["engine"],
        reference_img_s=rate["reference"],
        engine_over_reference=_paired_ratio(times, "reference", "engine"),
        engine_gflop_s=rate["engine"] * step_flops / 1e9,
        ceiling_fraction=rate["engine"] * step_flops / 1e9 / ceiling,
        cpu_share=statistics.median(share for shares in timings.cpu_share.values() for share in shares),
        best_img_s={name: per_block / min(times[name]) for name in steps},
        block_seconds=times,
        block_cpu_share=timings.cpu_share,
    )
    if "engine_eager_attention" in rate:
        result.eager_attention_img_s = rate["engine_eager_attention"]
        result.eager_attention_speedup = _paired_ratio(times, "engine", "engine_eager_attention")
    if "engine_compiled" in rate:
        result.compiled_img_s = rate["engine_compiled"]
        eager = "engine_eager_attention" if "engine_eager_attention" in rate else "engine"
        result.compiled_speedup = _paired_ratio(times, eager, "engine_compiled")
    if settings.profile:
        _progress(f"{precision}: profiling {settings.steps} engine steps")
        result.profile = profile_step(steps["engine"], steps=settings.steps)
    if distilled is not None:
        with_teacher = step_flops + flops["teacher"]
        result.distilled_img_s = rate["engine_distilled"]
        result.reference_distilled_img_s = rate["reference_distilled"]
        result.distilled_engine_over_reference = _paired_ratio(times, "reference_distilled", "engine_distilled")
        result.teacher_time_share = 1 - 1 / _paired_ratio(times, "engine_distilled", "engine")
        result.teacher_flop_share = flops["teacher"] / with_teacher
        result.distilled_gflop_s = rate["engine_distilled"] * with_teacher / 1e9
        result.distilled_ceiling_fraction = result.distilled_gflop_s / ceiling
    return result


# ---------------------------------------------------------------------------------------------------
# The data pipeline alone


@dataclass
class DataResult:
    source: str
    recipe: str
    techniques: list[str]
    per_worker_img_s: float  # one process, one thread: what one DataLoader worker can deliver
    per_worker_jpeg_img_s: float | None  # the same, decoding each CIFAR JPEG file per item (reference way)
    loader_img_s: dict[str, float]  # DataLoader(num_workers=w) alone, on this machine's cores
    step_img_s: float | None = None  # the fastest measured engine step it has to feed
    workers_needed: float | None = None  # step rate / per-worker rate, if the workers had cores of their own
    shared_core_img_s: float | None = None  # estimate with data and step sharing the THREADS cores


def training_recipe(img_size: int) -> Any:
    """The DeiT recipe the benchmark runs: ``cifar`` at 32 px (padded crop), ``deit`` above."""
    return AUGMENTATIONS.build("cifar" if img_size <= 32 else "deit", img_size=img_size)


def augmentation_dataset(settings: Settings, transform: Callable[[Any], Any], img_size: int) -> tuple[Dataset, str]:
    source = settings.data
    if source == "auto":
        source = "cifar10_jpeg" if img_size <= 32 else "synthetic"
    if source == "cifar10_jpeg":
        if img_size != 32:
            raise SystemExit(f"--data cifar10_jpeg holds 32x32 images; {settings.model} takes {img_size}: use --data synthetic")
        dataset = DATASETS.build("cifar10_jpeg", split="train", transform=transform, archive=settings.archive, in_memory=True)
        return dataset, "cifar10_jpeg (in_memory)"
    # A few hundred distinct images are enough: the pipeline's cost does not depend on the pixels.
    dataset = DATASETS.build("synthetic", split="train", transform=transform, size=256, img_size=img_size)
    return dataset, f"synthetic {img_size}px"


def measure_data(settings: Settings, *, img_size: int) -> DataResult:
    """The recipe's per-image pipeline (PIL image -> augmented, normalised tensor) in one thread, and
    through DataLoaders; for CIFAR-10 also from the JPEG files (decoded per item, the reference way)."""
    recipe = training_recipe(img_size)
    dataset, source = augmentation_dataset(settings, recipe.train_transform, img_size)
    datasets = {"memory": dataset}
    if source.startswith("cifar10_jpeg"):
        datasets["jpeg"] = DATASETS.build(
            "cifar10_jpeg", split="train", transform=recipe.train_transform, archive=settings.archive
        )
    generator = torch.Generator().manual_seed(0)
    count = settings.data_images

    def block(items: Dataset) -> Callable[[], None]:
        def run() -> None:
            for index in torch.randint(len(items), (count,), generator=generator).tolist():  # type: ignore[arg-type]
                items[index]

        return run

    blocks = {name: block(items) for name, items in datasets.items()}
    _progress(f"data: {source}, recipe {recipe.name}: {settings.repeats} rounds of {count} images per source, one thread")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker runs with
    try:
        for warm_up in blocks.values():
            warm_up()
        seconds = interleaved(blocks, repeats=settings.repeats).seconds
    finally:
        torch.set_num_threads(threads)
    loader_rates = {}
    for workers in (1, 2):
        _progress(f"data: DataLoader with {workers} worker(s), {settings.loader_batches} batches of {settings.batch}")
        loader_rates[str(workers)] = loader_rate(dataset, workers=workers, batch=settings.batch, batches=settings.loader_batches)
    return DataResult(
        source=source,
        recipe=recipe.name,
        techniques=recipe.techniques(),
        per_worker_img_s=_median_rate(seconds["memory"], count),
        per_worker_jpeg_img_s=_median_rate(seconds["jpeg"], count) if "jpeg" in seconds else None,
        loader_img_s=loader_rates,
    )


def loader_rate(dataset: Dataset, *, workers: int, batch: int, batches: int) -> float:
    """Images/s a ``DataLoader`` delivers with ``workers`` processes, counted after its first batch."""
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch * (batches + 1))  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # worker start-up excluded
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - started
    del iterator
    return batches * batch / seconds


def attach_step_rate(data: DataResult, steps: list[StepResult]) -> None:
    """Whether the data side keeps up with the fastest measured engine step (distilled if measured)."""
    if not steps:
        return
    rate = max(s.distilled_img_s if s.distilled_img_s is not None else s.engine_img_s for s in steps)
    data.step_img_s = rate
    data.workers_needed = rate / data.per_worker_img_s
    # Per image, the step occupies the whole machine for 1/rate s, and one worker's augmentation one
    # core for 1/per_worker s (1/(THREADS x per_worker) s of the machine): the best both can share.
    data.shared_core_img_s = 1 / (1 / rate + 1 / (THREADS * data.per_worker_img_s))


# ---------------------------------------------------------------------------------------------------
# One CIFAR epoch end to end: engine (fast settings) vs the reference way


@dataclass
class EpochResult:
    images: int
    val_images: int
    workers: int  # the engine's DataLoader workers
    reference_workers: int
    engine_precision: str
    engine_s: float
    engine_phases: dict[str, float]
    reference_s: float
    reference_phases: dict[str, float]
    reference_over_engine: float  # how many times faster the engine's epoch is, once-per-run costs included
    # The same for every later epoch of a run: training, evaluation and checkpoint, without the
    # once-per-run setup (datasets, model) and the engine's check of the teacher on the val set.
    reference_over_engine_per_epoch: float
    # One entry per round: engine_s, reference_s and both ratios. With several rounds, the seconds and
    # phases above are per-key medians and the ratios above are medians of the per-round ratios.
    rounds: list[dict[str, float]] = field(default_factory=list)
    engine_fused_attention_s: float | None = None
    engine_fused_attention_phases: dict[str, float] | None = None
    reference_over_engine_fused_attention: float | None = None


def engine_epoch(
    settings: Settings,
    *,
    precision: str,
    teacher_checkpoint: str | None,
    val_images: int,
    workdir: Path,
    fused_attention: bool = False,
) -> tuple[float, dict[str, float]]:
    """Wall time of ``train()`` for one epoch of experiments/base/cifar10.yaml (in-memory data) on a slice;
    ``fused_attention`` turns the recipe's ``train.fused_attention: false`` around."""
    distil = teacher_checkpoint is not None
    overrides = [
        f"model.name={settings.model}",
        f"loss.name={'hard' if distil else 'none'}",
        *(
            [f"teacher.name={settings.teacher}", f"teacher.checkpoint={teacher_checkpoint}", "teacher.channels_last=true"]
            if distil
            else []
        ),
        f"data.archive={Path(settings.archive).expanduser().resolve()}",
        f"loader.batch_size={settings.batch}",
        f"loader.workers={settings.epoch_workers}",
        f"loader.limit_train={settings.epoch_images}",
        f"loader.limit_val={val_images}",
        "train.epochs=1",
        f"train.precision={precision}",
        "train.progress=false",
        "logger.name=none",
        *(["train.fused_attention=true"] if fused_attention else []),
        f"output_dir={workdir / ('epoch_fused' if fused_attention else 'epoch')}",
    ]
    run = load_run(CIFAR_EXPERIMENT, overrides)
    marks: dict[str, float] = {}
    log_teacher = train_module._log_teacher

    def timed_log_teacher(loop: Loop, teacher: nn.Module) -> None:
        started = time.perf_counter()
        log_teacher(loop, teacher)
        marks["teacher_eval_s"] = time.perf_counter() - started

    def built(loop: Loop) -> None:
        marks["built"] = time.perf_counter()

    train_module._log_teacher = timed_log_teacher  # instrumentation only: the same call, timed
    started = time.perf_counter()
    try:
        train(run, on_loop=built)
    finally:
        train_module._log_teacher = log_teacher
    total = time.perf_counter() - started
    from research.engine.run_dir import read_metrics

    epoch = next(m for m in read_metrics(run.run_dir) if "epoch_time_s" in m)
    phases = {
        "setup_s": marks["built"] - started,
        "teacher_eval_s": marks.get("teacher_eval_s", 0.0),
        "train_s": epoch["epoch_time_s"],
    }
    phases["eval_and_checkpoint_s"] = total - sum(phases.values())
    return total, phases


@torch.no_grad()
def reference_evaluate(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """The reference ``evaluate``: cross-entropy and top-1/top-5 per batch, synced with ``.item()``."""
    criterion = nn.CrossEntropyLoss()
    model.eval()
    totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0}
    count = 0
    for images, target in loader:
        output = model(images)  # (B, C); a distilled model averages its heads in eval mode
        loss = criterion(output, target)
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        size = images.shape[0]
        totals["loss"] += loss.item() * size
        totals["top1"] += acc1.item() * size
        totals["top5"] += acc5.item() * size
        count += size
    return {key: value / max(count, 1) for key, value in totals.items()}


def _slice(dataset: Dataset, size: int) -> Subset:
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()  # type: ignore[arg-type]
    return Subset(dataset, sorted(order[:size]))


def reference_epoch(
    settings: Settings, *, teacher_checkpoint: str | None, val_images: int, workdir: Path
) -> tuple[float, dict[str, float]]:
    """One epoch the reference way: ImageFolder over the JPEGs (decoded every epoch), fp32, same recipe."""
    started = time.perf_counter()
    recipe = training_recipe(32)
    archive = str(Path(settings.archive).expanduser().resolve())
    train_set = _slice(
        DATASETS.build("cifar10_jpeg", split="train", transform=recipe.train_transform, archive=archive), settings.epoch_images
    )
    val_set = _slice(DATASETS.build("cifar10_jpeg", split="val", transform=recipe.eval_transform, archive=archive), val_images)
    sampler = RepeatedAugSampler(train_set, num_replicas=1, rank=0, repeats=recipe.repeats, seed=0)
    workers = settings.epoch_reference_workers
    train_loader = DataLoader(train_set, batch_size=settings.batch, sampler=sampler, num_workers=workers, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=2 * settings.batch, num_workers=workers)
    model = MODELS.build(settings.model, num_classes=NUM_CLASSES, img_size=32, drop_path_rate=0.1)
    teacher = None
    if teacher_checkpoint is not None:
        teacher = MODELS.build(TEACHERS.metadata(settings.teacher)["arch"], num_classes=NUM_CLASSES)
        teacher.load_state_dict(torch.load(teacher_checkpoint, map_location="cpu"))
        teacher.eval()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=5e-4 * settings.batch / 512, weight_decay=0.05)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=1, warmup_epochs=0)
    mixup_fn = recipe.mixup(num_classes=NUM_CLASSES, label_smoothing=0.1)
    criterion = ReferenceLoss(timm.loss.SoftTargetCrossEntropy(), teacher)
    built = time.perf_counter()

    model.train()
    for samples, targets in train_loader:
        reference_step(model, criterion, optimizer, mixup_fn, samples, targets, "fp32")
    scheduler.step(1)  # per epoch, as the reference main loop does
    trained = time.perf_counter()
    reference_evaluate(model, val_loader)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 0}, workdir / "reference.pt")
    done = time.perf_counter()
    return done - started, {"setup_s": built - started, "train_s": trained - built, "eval_and_checkpoint_s": done - trained}


def _per_epoch_s(phases: dict[str, float]) -> float:
    """What each epoch after the first costs: train + eval + checkpoint (setup and teacher check are once per run)."""
    return phases["train_s"] + phases["eval_and_checkpoint_s"]


def measure_epoch(settings: Settings, *, precision: str, teacher_checkpoint: str | None, workdir: Path) -> EpochResult:
    if img_size_of(settings.model) != 32:
        raise SystemExit(f"--epoch times a CIFAR-10 epoch: {settings.model} is not a 32x32 model")
    val_images = min(5000, max(settings.batch, settings.epoch_images // 8))  # CIFAR-10 here: 40k train, 5k val
    engines, references, rounds = [], [], []
    for index in range(settings.epoch_rounds):

        def engine_side(index: int = index) -> tuple[float, dict[str, float]]:
            _progress(
                f"epoch round {index + 1}: engine, {settings.epoch_images} images, {precision}, "
                f"{settings.epoch_workers} workers, in-memory data"
            )
            return engine_epoch(
                settings,
                precision=precision,
                teacher_checkpoint=teacher_checkpoint,
                val_images=val_images,
                workdir=workdir / f"round{index}",
            )

        def reference_side(index: int = index) -> tuple[float, dict[str, float]]:
            _progress(
                f"epoch round {index + 1}: reference way, {settings.epoch_images} images, fp32, JPEG decoding, "
                f"{settings.epoch_reference_workers} workers"
            )
            return reference_epoch(settings, teacher_checkpoint=teacher_checkpoint, val_images=val_images, workdir=workdir)

        if index % 2:  # every other round the reference goes first, so a drift in load hits both sides
            reference, engine = reference_side(), engine_side()
        else:
            engine, reference = engine_side(), reference_side()
        engines.append(engine)
        references.append(reference)
        rounds.append(
            {
                "engine_s": engine[0],
                "reference_s": reference[0],
                "reference_over_engine": reference[0] / engine[0],
                "reference_over_engine_per_epoch": _per_epoch_s(reference[1]) / _per_epoch_s(engine[1]),
            }
        )
    fused_s, fused_phases = None, None
    if settings.epoch_fused_attention:
        _progress("epoch: engine as above, with fused attention")
        fused_s, fused_phases = engine_epoch(
            settings,
            precision=precision,
            teacher_checkpoint=teacher_checkpoint,
            val_images=val_images,
            workdir=workdir / "fused",
            fused_attention=True,
        )
    engine_s = statistics.median(seconds for seconds, _ in engines)
    reference_s = statistics.median(seconds for seconds, _ in references)
    return EpochResult(
        images=settings.epoch_images,
        val_images=val_images,
        workers=settings.epoch_workers,
        reference_workers=settings.epoch_reference_workers,
        engine_precision=precision,
        engine_s=engine_s,
        engine_phases=_median_phases([phases for _, phases in engines]),
        reference_s=reference_s,
        reference_phases=_median_phases([phases for _, phases in references]),
        reference_over_engine=statistics.median(r["reference_over_engine"] for r in rounds),
        reference_over_engine_per_epoch=statistics.median(r["reference_over_engine_per_epoch"] for r in rounds),
        rounds=rounds,
        engine_fused_attention_s=fused_s,
        engine_fused_attention_phases=fused_phases,
        reference_over_engine_fused_attention=reference_s / fused_s if fused_s else None,
    )


def _median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(phases[key] for phases in runs) for key in runs[0]}


# ---------------------------------------------------------------------------------------------------
# Report


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": _load(),
    }


def _fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def print_report(results: dict[str, Any], settings: Settings) -> None:
    m, flops = results["machine"], results["flops"]
    share = min((s["cpu_share"] for s in results["steps"]), default=1.0)
    busy = m["load_average_start"] > 1.5 or share < 0.9
    print(f"\nMachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), timm {m['timm']}")
    print(
        f"Load average (1 min) before the run: {m['load_average_start']:.2f}; share of the cores this process got "
        f"while timing steps: {share:.0%}"
        + (
            "\n  <- other processes shared the cores: trust the ratios (eng/ref, teacher time) more than the rates"
            if busy
            else ""
        )
    )
    print(
        f"\n{settings.model}, batch {settings.batch}: forward {flops['student'] / 1e6:.1f} MFLOP/image, "
        f"train step ~3x = {3 * flops['student'] / 1e6:.1f}"
        + (f"; teacher {settings.teacher} forward {flops['teacher'] / 1e6:.1f}" if "teacher" in flops else "")
    )
    print(
        f"Medians of {settings.repeats} interleaved rounds: torch.mm {settings.matmul_size}^2 (the ceiling), then "
        f"{settings.steps} steps of each loop; data excluded. eng/ref: median of per-round ratios (>1: engine faster)."
    )
    print(
        f"{'precision':<10}{'ceiling GFLOP/s':>16}{'engine img/s':>14}{'reference':>11}{'eng/ref':>9}"
        f"{'GFLOP/s':>9}{'of ceiling':>12}{'CPU share':>11}"
    )
    for s in results["steps"]:
        print(
            f"{s['precision']:<10}{s['ceiling_gflop_s']:>16.0f}{s['engine_img_s']:>14.1f}{s['reference_img_s']:>11.1f}"
            f"{s['engine_over_reference']:>9.3f}{s['engine_gflop_s']:>9.1f}{s['ceiling_fraction']:>12.0%}{s['cpu_share']:>11.0%}"
        )
    if any(s["eager_attention_img_s"] is not None for s in results["steps"]):
        print(
            "Engine step with attention as explicit matmuls + softmax (timm fused_attn=False, i.e. TIMM_FUSED_ATTN=0): "
            + ", ".join(
                f"{s['precision']} {s['eager_attention_img_s']:.1f} img/s ({s['eager_attention_speedup']:.2f}x)"
                for s in results["steps"]
            )
        )
    if any(s["compiled_img_s"] is not None for s in results["steps"]):
        print(
            "Engine step with train.compile (torch.compile, non-fused attention), against the non-fused eager step: "
            + ", ".join(
                f"{s['precision']} {s['compiled_img_s']:.1f} img/s ({s['compiled_speedup']:.2f}x)" for s in results["steps"]
            )
        )
    if any(s["distilled_img_s"] is not None for s in results["steps"]):
        print(f"\nWith the teacher (hard distillation, {settings.teacher}):")
        print(
            f"{'precision':<10}{'engine img/s':>14}{'reference':>11}{'eng/ref':>9}{'teacher time':>14}"
            f"{'teacher FLOPs':>15}{'GFLOP/s':>9}{'of ceiling':>12}"
        )
        for s in results["steps"]:
            print(
                f"{s['precision']:<10}{s['distilled_img_s']:>14.1f}{s['reference_distilled_img_s']:>11.1f}"
                f"{s['distilled_engine_over_reference']:>9.3f}{s['teacher_time_share']:>14.0%}{s['teacher_flop_share']:>15.0%}"
                f"{s['distilled_gflop_s']:>9.1f}{s['distilled_ceiling_fraction']:>12.0%}"
            )
    for s in results["steps"]:
        if s["profile"]:
            p = s["profile"]
            print(
                f"\nProfile of the engine step, {s['precision']} (self CPU time, torch.profiler): "
                f"{p['profiled_ms_per_step']:.0f} ms/step, matrix products (mm, conv, attention) {p['gemm_share']:.0%}"
            )
            for op in p["top_ops"]:
                print(f"  {op['op']:<56}{op['ms_per_step']:>8.1f} ms{op['share']:>6.0%}")
    for s in results["steps"]:
        print(f"Fastest round, {s['precision']}: " + ", ".join(f"{k} {v:.1f}" for k, v in s["best_img_s"].items()) + " img/s")
    data = results.get("data")
    if data:
        print(f"\nData: recipe {data['recipe']} ({', '.join(data['techniques'])}) on {data['source']}, PIL per image:")
        print(
            f"  one worker process: {data['per_worker_img_s']:.0f} img/s (median of {settings.repeats} blocks of {settings.data_images})"
            + (
                f"; decoding the JPEG files instead: {data['per_worker_jpeg_img_s']:.0f} img/s"
                if data["per_worker_jpeg_img_s"]
                else ""
            )
        )
        print("  DataLoader alone:   " + ", ".join(f"{w} worker(s) {r:.0f} img/s" for w, r in data["loader_img_s"].items()))
        if data["step_img_s"] is not None:
            print(
                f"  the fastest step above takes {data['step_img_s']:.0f} img/s = {data['workers_needed']:.2f} workers' worth of "
                f"augmentation; sharing the {THREADS} cores with it: at best {data['shared_core_img_s']:.0f} img/s end to end"
            )
    epoch = results.get("epoch")
    if epoch:
        rounds = len(epoch["rounds"])
        print(
            f"\nOne CIFAR-10 epoch, {epoch['images']} train + {epoch['val_images']} val images, DataLoader workers: "
            f"engine {epoch['workers']}, reference {epoch['reference_workers']}"
            + (f" (medians of {rounds} rounds, alternating which side goes first):" if rounds > 1 else ":")
        )
        rows = [("engine", epoch["engine_s"], epoch["engine_phases"])]
        if epoch["engine_fused_attention_s"] is not None:
            rows.append(("engine, fused attention", epoch["engine_fused_attention_s"], epoch["engine_fused_attention_phases"]))
        rows.append(("reference", epoch["reference_s"], epoch["reference_phases"]))
        for who, seconds, phases in rows:
            detail = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in phases.items())
            print(f"  {who:<25}{seconds:>7.1f} s  ({detail})")
        print(
            f"  reference / engine: {epoch['reference_over_engine']:.2f}x"
            + (
                f"; with fused attention {epoch['reference_over_engine_fused_attention']:.2f}x"
                if epoch["reference_over_engine_fused_attention"]
                else ""
            )
            + f"  (engine: in-memory data, {epoch['engine_precision']}; reference: JPEG decoding every epoch, fp32)"
        )
        print(
            f"  every later epoch (train + eval + checkpoint; no setup, no teacher check): reference / engine "
            f"{epoch['reference_over_engine_per_epoch']:.2f}x"
        )
        if rounds > 1:
            print(
                "  per round, first epoch / later epochs: "
                + ", ".join(f"{r['reference_over_engine']:.2f}x / {r['reference_over_engine_per_epoch']:.2f}x" for r in epoch["rounds"])
            )


def run(settings: Settings) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    results: dict[str, Any] = {"machine": machine(), "settings": asdict(settings)}
    size = img_size_of(settings.model)
    distilled = bool(MODELS.metadata(settings.model).get("distilled"))
    use_teacher = settings.teacher != "none" and distilled
    if settings.teacher != "none" and not distilled:
        _progress(f"{settings.model} has no distillation token: distillation not measured")

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        checkpoint = random_teacher_checkpoint(settings.teacher, workdir / "teacher.pt") if use_teacher else None
        probe = torch.randn(2, 3, size, size)
        student = MODELS.build(settings.model, num_classes=NUM_CLASSES, img_size=size).train()
        flops = {"student": forward_flops(student, probe)}
        if use_teacher:
            arch = TEACHERS.metadata(settings.teacher)["arch"]
            teacher = (
                MODELS.build(arch, num_classes=NUM_CLASSES)
                if arch in MODELS
                else timm.create_model(arch, num_classes=NUM_CLASSES)
            )
            flops["teacher"] = forward_flops(teacher.eval(), probe)
        results["flops"] = flops

        steps = [
            measure_steps(settings, precision=p, teacher_checkpoint=checkpoint, flops=flops, workdir=workdir)
            for p in settings.precision
        ]
        results["steps"] = [asdict(s) for s in steps]
        results["ceiling_gflop_s"] = {s.precision: s.ceiling_gflop_s for s in steps}

        data = measure_data(settings, img_size=size)
        attach_step_rate(data, steps)
        results["data"] = asdict(data)

        if settings.epoch:
            precision = settings.epoch_precision
            if precision == "auto":  # what the CIFAR recipe trains in (bf16, with non-fused attention)
                precision = load_run(CIFAR_EXPERIMENT).cfg.train.precision
            results["epoch"] = asdict(
                measure_epoch(settings, precision=precision, teacher_checkpoint=checkpoint, workdir=workdir)
            )
    results["machine"]["load_average_end"] = _load()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    started = time.perf_counter()
    results = run(settings)
    results["wall_time_s"] = time.perf_counter() - started
    print_report(results, settings)
    print(f"\n(benchmark wall time {results['wall_time_s']:.0f} s)")
    if settings.out:
        Path(settings.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
