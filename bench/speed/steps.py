"""Train-step measurements: the engine's step against the reference loop, with non-fused attention,
compiled, and with the teacher, on a fixed batch already on the device (data excluded)."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from research.engine.fit import Loop, train_step
from speed.flops import matmul_block, spec_peak_tflops
from speed.loops import NUM_CLASSES, attention_modules, build_loop, eager_attention, img_size_of
from speed.reference import ReferenceSettings, reference_stepper
from speed.settings import Settings
from speed.timing import interleaved, median_rate, paired_ratio, progress, repeat, synchronizer

MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        "sched": {"warmup_epochs": 0},  # shorter than the one epoch (the lr does not change the speed)
        "train": {"epochs": 1, "precision": precision, "progress": False}
        | ({"compile": True} if compiled else {}),  # flash attention kept: the eager step has it too
    }


_GEMM_OPS = re.compile(r"mm|conv|attention|gemm|sm90|sm80|cutlass|flash|fmha")  # aten products and their GPU kernels


def profile_step(step: Callable[[], Any], *, steps: int, device: torch.device, top: int = 8) -> dict[str, Any]:
    """Self time per op over ``steps`` calls of ``step`` (CPU time on a CPU, kernel time on a GPU): the
    heaviest ops, and the share of matrix products (matmuls, convolutions, attention) against the rest
    (norms, activations, casts, the optimizer)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    on_gpu = device.type == "cuda"
    if on_gpu:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sync = synchronizer(device)
    sync()
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        sync()
    events = profiler.key_averages()

    def self_us(event: Any) -> float:
        if on_gpu:
            return float(getattr(event, "self_device_time_total", 0.0) or getattr(event, "self_cuda_time_total", 0.0))
        return float(event.self_cpu_time_total)

    ops = [(event.key, self_us(event) / 1e3 / steps) for event in events]  # ms per step
    ops = [(name, ms) for name, ms in ops if ms > 0]
    total = sum(ms for _, ms in ops) or 1e-9
    gemm = sum(ms for name, ms in ops if _GEMM_OPS.search(name))
    heaviest = sorted(ops, key=lambda op: -op[1])[:top]
    return {
        "clock": "GPU kernel time" if on_gpu else "CPU time",
        "profiled_ms_per_step": total,
        "gemm_share": gemm / total,
        "top_ops": [{"op": name, "ms_per_step": ms, "share": ms / total} for name, ms in heaviest],
    }


@dataclass
class StepResult:
    """One precision's step measurements. Rates are medians over rounds; ``*_over_reference`` are
    medians of the per-round ratios (engine and reference run back to back in each round)."""

    precision: str
    device: str
    ceiling_gflop_s: float
    engine_img_s: float
    reference_img_s: float  # the reference way of driving the step, at the engine's precision
    engine_over_reference: float
    engine_gflop_s: float
    ceiling_fraction: float  # of the measured matmul ceiling
    spec_peak_tflops: float | None = None  # the card's dense data-sheet peak at this precision
    mfu: float | None = None  # engine GFLOP/s over that peak
    reference_deit_img_s: float | None = None  # on a GPU: deit's own way, fp16 + GradScaler, item + sync
    engine_over_reference_deit: float | None = None
    eager_attention_img_s: float | None = None  # the engine step with timm's non-fused attention
    eager_attention_speedup: float | None = None  # median per-round ratio against the engine step
    compiled_img_s: float | None = None  # the engine step with train.compile (fused attention, as eager)
    compiled_speedup: float | None = None  # median per-round ratio against the eager engine step
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


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def measure_steps(
    settings: Settings, *, precision: str, teacher_checkpoint: str | None, flops: dict[str, float], workdir: Path
) -> StepResult:
    """Ceiling, engine and reference steps (and both with the teacher), in interleaved rounds."""
    device = settings.torch_device()
    size = img_size_of(settings.model)

    def loop_for(**options: Any) -> Loop:
        return build_loop(bench_experiment(settings, precision=precision, workdir=workdir, **options), workdir, device)

    plain = loop_for(teacher_checkpoint=None)
    distilled = loop_for(teacher_checkpoint=teacher_checkpoint) if teacher_checkpoint is not None else None
    images = torch.randn(settings.batch, 3, size, size, device=device)  # (B, 3, H, W), already normalised
    targets = torch.randint(0, NUM_CLASSES, (settings.batch,), device=device)
    equal = ReferenceSettings.equal_to(precision, device)

    def engine(loop: Loop) -> Callable[[], Any]:
        return lambda: train_step(loop, images, targets)

    steps = {"engine": engine(plain), "reference": reference_stepper(plain, images, targets, equal)}
    if device.type == "cuda" and ReferenceSettings.deit(device) != equal:
        steps["reference_deit"] = reference_stepper(plain, images, targets, ReferenceSettings.deit(device))
    if any(module.fused_attn for module in attention_modules(plain.state.model)):

        def engine_eager() -> None:
            with eager_attention(plain.state.model):
                train_step(plain, images, targets)

        steps["engine_eager_attention"] = engine_eager
    if settings.compile:
        steps["engine_compiled"] = engine(loop_for(teacher_checkpoint=None, compiled=True))
    if distilled is not None:
        steps["engine_distilled"] = engine(distilled)
        steps["reference_distilled"] = reference_stepper(distilled, images, targets, equal)
    sync = synchronizer(device)
    for step in steps.values():  # warm-up: allocator, kernel selection, optimizer state, compilation
        for _ in range(settings.warmup):
            step()
    sync()
    matmul, matmul_flops = matmul_block(MATMUL_DTYPES[precision], size=settings.matmul_size, device=device)
    blocks = {"matmul": matmul, **{name: repeat(step, settings.steps) for name, step in steps.items()}}
    progress(f"{precision} on {device}: {settings.repeats} rounds of torch.mm and {settings.steps} steps of {', '.join(steps)}")
    timings = interleaved(blocks, repeats=settings.repeats, sync=sync)
    times = timings.seconds

    ceiling = matmul_flops / statistics.median(times["matmul"]) / 1e9
    per_block = settings.steps * settings.batch
    rate = {name: median_rate(times[name], per_block) for name in steps}
    step_flops = 3 * flops["student"]  # forward + backward (about 2x the forward)
    engine_gflop_s = rate["engine"] * step_flops / 1e9
    peak = spec_peak_tflops(device_name(device), precision)
    result = StepResult(
        precision=precision,
        device=device_name(device),
        ceiling_gflop_s=ceiling,
        engine_img_s=rate["engine"],
        reference_img_s=rate["reference"],
        engine_over_reference=paired_ratio(times, "reference", "engine"),
        engine_gflop_s=engine_gflop_s,
        ceiling_fraction=engine_gflop_s / ceiling,
        spec_peak_tflops=peak,
        mfu=engine_gflop_s / (peak * 1e3) if peak else None,
        cpu_share=statistics.median(share for shares in timings.cpu_share.values() for share in shares),
        best_img_s={name: per_block / min(times[name]) for name in steps},
        block_seconds=times,
        block_cpu_share=timings.cpu_share,
    )
    if "reference_deit" in rate:
        result.reference_deit_img_s = rate["reference_deit"]
        result.engine_over_reference_deit = paired_ratio(times, "reference_deit", "engine")
    if "engine_eager_attention" in rate:
        result.eager_attention_img_s = rate["engine_eager_attention"]
        result.eager_attention_speedup = paired_ratio(times, "engine", "engine_eager_attention")
    if "engine_compiled" in rate:
        result.compiled_img_s = rate["engine_compiled"]
        result.compiled_speedup = paired_ratio(times, "engine", "engine_compiled")
    if settings.profile:
        progress(f"{precision}: profiling {settings.steps} engine steps")
        result.profile = profile_step(steps["engine"], steps=settings.steps, device=device)
    if distilled is not None:
        with_teacher = step_flops + flops["teacher"]
        result.distilled_img_s = rate["engine_distilled"]
        result.reference_distilled_img_s = rate["reference_distilled"]
        result.distilled_engine_over_reference = paired_ratio(times, "reference_distilled", "engine_distilled")
        result.teacher_time_share = 1 - 1 / paired_ratio(times, "engine_distilled", "engine")
        result.teacher_flop_share = flops["teacher"] / with_teacher
        result.distilled_gflop_s = rate["engine_distilled"] * with_teacher / 1e9
        result.distilled_ceiling_fraction = result.distilled_gflop_s / ceiling
    return result
