"""What ``bench/throughput.py`` prints: the machine, then one table per measurement; and the same
tables as Markdown (``--markdown``) for docs/PERFORMANCE.md and ``bench/gpu_check.sh``."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import timm
import torch

from speed.settings import Settings
from speed.timing import load_average


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": str(device),
        "gpu": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "timm": timm.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1), "sms": props.multi_processor_count}
    return info


def _fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def step_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per precision: the step's rates, ratios and utilisation (shared by print and Markdown)."""
    rows = []
    for s in results["steps"]:
        rows.append(
            [
                s["precision"],
                _fmt(s["ceiling_gflop_s"]),
                _fmt(s["engine_img_s"], ".1f"),
                _fmt(s["reference_img_s"], ".1f"),
                _fmt(s["engine_over_reference"], ".3f"),
                _fmt(s["reference_deit_img_s"], ".1f"),
                _fmt(s["engine_over_reference_deit"], ".3f"),
                _fmt(s["engine_gflop_s"], ".1f"),
                _fmt(100 * s["ceiling_fraction"], ".1f", "%"),
                _fmt(None if s["mfu"] is None else 100 * s["mfu"], ".1f", "%"),
            ]
        )
    return rows


STEP_HEADER = [
    "precision", "ceiling GFLOP/s", "engine img/s", "reference", "eng/ref",
    "deit way", "eng/deit", "GFLOP/s", "of ceiling", "MFU (spec)",
]  # fmt: skip


def print_report(results: dict[str, Any], settings: Settings) -> None:
    m, flops = results["machine"], results["flops"]
    on_gpu = m["gpu"] is not None
    share = min((s["cpu_share"] for s in results["steps"]), default=1.0)
    busy = not on_gpu and (m["load_average_start"] > 1.5 or share < 0.9)
    where = f"GPU {m['gpu']['name']} ({m['gpu']['memory_gib']} GiB), " if on_gpu else ""
    print(
        f"\nMachine: {where}{m['cpu']}, {m['cores']} cores, torch {m['torch']} (CUDA {m['cuda']}, "
        f"{m['torch_threads']} threads), timm {m['timm']}; measured on {m['device']}"
    )
    if not on_gpu:
        print(
            f"Load average (1 min) before the run: {m['load_average_start']:.2f}; share of the cores this process got "
            f"while timing steps: {share:.0%}"
            + ("\n  <- other processes shared the cores: trust the ratios (eng/ref, teacher time) more than the rates" if busy else "")
        )
    print(
        f"\n{settings.model}, batch {settings.batch}: forward {flops['student'] / 1e9:.3f} GFLOP/image, "
        f"train step ~3x = {3 * flops['student'] / 1e9:.3f}"
        + (f"; teacher {settings.teacher} forward {flops['teacher'] / 1e9:.3f}" if "teacher" in flops else "")
    )
    counts = results.get("flop_counts", {})
    if len(counts) > 1:
        print("FLOP counter per image, by device and mode: " + ", ".join(f"{k} {v / 1e9:.3f} G" for k, v in counts.items()))
    print(
        f"Medians of {settings.repeats} interleaved rounds: torch.mm {settings.matmul_size}^2 (the ceiling), then "
        f"{settings.steps} steps of each loop; data excluded. eng/ref: median of per-round ratios (>1: engine faster). "
        "reference: deit's loop (loss.item() every step) at the engine's precision; deit way: fp16 + GradScaler + "
        "synchronize every step (GPU only). MFU: engine FLOP/s over the card's dense data-sheet peak."
    )
    print("".join(f"{h:>16}" for h in STEP_HEADER))
    for row in step_rows(results):
        print("".join(f"{cell:>16}" for cell in row))
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
            "Engine step with train.compile (the compiled step, fused attention), against the eager engine step: "
            + ", ".join(f"{s['precision']} {s['compiled_img_s']:.1f} img/s ({s['compiled_speedup']:.2f}x)" for s in results["steps"])
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
                f"\nProfile of the engine step, {s['precision']} (self {p['clock']}, torch.profiler): "
                f"{p['profiled_ms_per_step']:.1f} ms/step, matrix products (mm, conv, attention) {p['gemm_share']:.0%}"
            )
            for op in p["top_ops"]:
                print(f"  {op['op'][:56]:<56}{op['ms_per_step']:>8.2f} ms{op['share']:>6.0%}")
    for s in results["steps"]:
        print(f"Fastest round, {s['precision']}: " + ", ".join(f"{k} {v:.1f}" for k, v in s["best_img_s"].items()) + " img/s")
    _print_data(results.get("data"), settings)
    _print_epoch(results.get("epoch"))


def _print_data(data: dict[str, Any] | None, settings: Settings) -> None:
    if not data:
        return
    print(f"\nData: recipe {data['recipe']} ({', '.join(data['techniques'])}) on {data['source']}, PIL per image:")
    print(
        f"  one worker process: {data['per_worker_img_s']:.0f} img/s (median of {settings.repeats} blocks of {settings.data_images})"
        + (f"; decoding the JPEG files instead: {data['per_worker_jpeg_img_s']:.0f} img/s" if data["per_worker_jpeg_img_s"] else "")
    )
    print("  DataLoader alone:   " + ", ".join(f"{w} worker(s) {r:.0f} img/s" for w, r in data["loader_img_s"].items()))
    if data["step_img_s"] is not None:
        print(
            f"  the fastest step above takes {data['step_img_s']:.0f} img/s = {data['workers_needed']:.2f} workers' worth of "
            "augmentation"
            + (
                f"; sharing the {settings.threads} cores with it: at best {data['shared_core_img_s']:.0f} img/s end to end"
                if data["shared_core_img_s"] is not None
                else ""
            )
        )


def _print_epoch(epoch: dict[str, Any] | None) -> None:
    if not epoch:
        return
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
        + f"  (engine: in-memory data, {epoch['engine_precision']}; reference: JPEG decoding every epoch, "
        f"{epoch['reference_precision']})"
    )
    print(f"  engine training phase: {epoch['engine_train_img_s']:.0f} img/s")
    print(
        f"  every later epoch (train + eval + checkpoint; no setup, no teacher check): reference / engine "
        f"{epoch['reference_over_engine_per_epoch']:.2f}x"
    )
    if rounds > 1:
        print(
            "  per round, first epoch / later epochs: "
            + ", ".join(f"{r['reference_over_engine']:.2f}x / {r['reference_over_engine_per_epoch']:.2f}x" for r in epoch["rounds"])
        )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict[str, Any], settings: Settings) -> str:
    """The step table (and the epoch, when measured) as Markdown, headed by the machine and model."""
    m = results["machine"]
    where = m["gpu"]["name"] if m["gpu"] else f"{m['cpu']} ({m['cores']} cores)"
    parts = [
        f"**{settings.model}**, batch {settings.batch}, on {where}; torch {m['torch']}, timm {m['timm']}; "
        f"forward {results['flops']['student'] / 1e9:.3f} GFLOP/image",
        "",
        markdown_table(STEP_HEADER, step_rows(results)),
    ]
    epoch = results.get("epoch")
    if epoch:
        parts += [
            "",
            f"CIFAR-10 epoch ({epoch['images']} images, {epoch['engine_precision']}): engine {epoch['engine_s']:.1f} s "
            f"(training phase {epoch['engine_train_img_s']:.0f} img/s), reference way {epoch['reference_s']:.1f} s, "
            f"reference / engine {epoch['reference_over_engine']:.2f}x",
        ]
    return "\n".join(parts) + "\n"
