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

It measures on the GPU when torch sees one (``--device`` picks), where the reference also runs the
way deit's ``engine.py`` does on a GPU (fp16 autocast, GradScaler, ``loss.item()`` and
``torch.cuda.synchronize()`` every step), and the step's MFU is given against the card's data-sheet
peak beside the measured matmul ceiling. The pieces live in ``bench/speed/``, one concern per module.

Usage (from the repository root; see docs/PERFORMANCE.md for the numbers)::

    python bench/throughput.py                                  # deit_micro_distilled_patch4_32, ~4 min
    python bench/throughput.py --model deit_tiny_distilled_patch16_224 --batch 32 --teacher none
    python bench/throughput.py --epoch --epoch-fused-attention  # adds CIFAR epochs on 5000 images, ~2.5 min more
    python bench/throughput.py --tiny --out /tmp/bench.json     # CI smoke: seconds
    python bench/throughput.py --device cuda --model deit_base_patch16_224 --batch 128 --precision bf16 --teacher none
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from speed.data import attach_step_rate, measure_data
from speed.epoch import CIFAR_EXPERIMENT, measure_epoch
from speed.flops import flops_by_device, model_flops
from speed.loops import NUM_CLASSES, img_size_of, random_teacher_checkpoint
from speed.report import machine, markdown, print_report
from speed.settings import Settings, parse_args
from speed.steps import bench_experiment, measure_steps
from speed.timing import load_average, progress

from research.config import load_run
from research.launch.cost import Throughput, record_throughput
from research.launch.measure import measure_throughput
from research.registry import MODELS
from research.teachers import teacher_network


def run(settings: Settings, command: str = "") -> dict[str, Any]:
    device = settings.torch_device()
    torch.set_num_threads(settings.threads)
    results: dict[str, Any] = {"machine": machine(device), "settings": asdict(settings)}
    size = img_size_of(settings.model)
    distilled = MODELS.info(settings.model).distilled
    use_teacher = settings.teacher != "none" and distilled
    if settings.teacher != "none" and not distilled:
        progress(f"{settings.model} has no distillation token: distillation not measured")

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        checkpoint = random_teacher_checkpoint(settings.teacher, workdir / "teacher.pt") if use_teacher else None
        student = MODELS.build(settings.model, num_classes=NUM_CLASSES, img_size=size)
        counts = flops_by_device(student, size, device)
        results["flop_counts"] = counts
        flops = {"student": counts["cpu_eval"]}
        if use_teacher:
            flops["teacher"] = model_flops(teacher_network(settings.teacher, num_classes=NUM_CLASSES), size)
        results["flops"] = flops
        _warn_if_counts_disagree(counts)

        steps = [
            measure_steps(settings, precision=p, teacher_checkpoint=checkpoint, flops=flops, workdir=workdir)
            for p in settings.precision
        ]
        results["steps"] = [asdict(s) for s in steps]
        results["ceiling_gflop_s"] = {s.precision: s.ceiling_gflop_s for s in steps}

        if not settings.skip_data:
            data = measure_data(settings, img_size=size)
            attach_step_rate(data, steps, cores=settings.threads, on_gpu=device.type == "cuda")
            results["data"] = asdict(data)

        if settings.epoch:
            precision = settings.epoch_precision
            if precision == "auto":  # what the CIFAR recipe trains in (bf16, with non-fused attention)
                precision = load_run(CIFAR_EXPERIMENT).cfg.train.precision
            results["epoch"] = asdict(measure_epoch(settings, precision=precision, teacher_checkpoint=checkpoint, workdir=workdir))
        if settings.record_table:
            results["recorded_in"] = str(record_throughput(table_rows(settings, workdir, checkpoint, command), settings.record_table))
    results["machine"]["load_average_end"] = load_average()
    return results


def _warn_if_counts_disagree(counts: dict[str, float]) -> None:
    """MFU uses the CPU eval-mode count; say so when the GPU's counter sees another number."""
    reference = counts["cpu_eval"]
    for key, value in counts.items():
        if abs(value - reference) > 0.01 * reference:
            progress(f"FLOP counter: {key} counts {value / 1e9:.3f} G per image against {reference / 1e9:.3f} G on the CPU; MFU uses the CPU count")


def table_rows(settings: Settings, workdir: Path, teacher_checkpoint: str | None, command: str) -> list[Throughput]:
    """The step rows of the measured experiments (with and without the teacher), measured as ``research
    throughput`` measures them (scope ``step``: data excluded)."""
    rows = []
    for precision in settings.precision:
        for checkpoint in dict.fromkeys([None, teacher_checkpoint]):
            experiment = bench_experiment(settings, precision=precision, teacher_checkpoint=checkpoint, workdir=workdir)
            path = workdir / f"{experiment['name']}_row.yaml"
            path.write_text(yaml.safe_dump(experiment, sort_keys=False))
            device_name = settings.table_device_name()
            rows.append(measure_throughput(load_run(path), device_name=device_name, device=settings.torch_device(), source=command))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv, description=__doc__.split("\n\n")[0])
    started = time.perf_counter()
    command = "python bench/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = run(settings, command)
    results["wall_time_s"] = time.perf_counter() - started
    print_report(results, settings)
    print(f"\n(benchmark wall time {results['wall_time_s']:.0f} s)")
    if settings.out:
        Path(settings.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {settings.out}")
    if settings.record_table:
        print(f"step rates recorded in {results['recorded_in']}")
    if settings.markdown:
        Path(settings.markdown).write_text(markdown(results, settings))
        print(f"Markdown written to {settings.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
