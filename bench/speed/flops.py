"""FLOPs per image, and the two ceilings a step is compared with: the measured matmul rate and the
card's dense peak from its data sheet (model FLOPs utilisation, MFU).

FLOPs are counted with the package's counter (:mod:`research.models.flops`) on the CPU, in eval mode:
the count of a model is a property of its shapes, not of the device, and counting it once, the same
way, keeps the MFU of every device comparable. :func:`flops_by_device` counts it again on the GPU, in
training mode and at a larger batch, so a counter that disagrees across devices shows up in the
results instead of in the MFU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from research.models.flops import forward_flops

#: Dense (no sparsity) tensor-core peaks in TFLOP/s from NVIDIA's data sheets, by precision; "fp32"
#: is the plain FP32 rate (no TF32), which torch's matmuls use unless TF32 is switched on. The first
#: entry whose name is in ``torch.cuda.get_device_name()`` wins, so longer names come first.
SPEC_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),  # SXM
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "fp16": 362.1, "fp32": 91.6}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
]


def spec_peak_tflops(device_name: str, precision: str) -> float | None:
    """The card's dense peak for ``precision``, or None for a card (or a CPU) the table does not know."""
    for name, peaks in SPEC_PEAK_TFLOPS:
        if name in device_name:
            return peaks.get(precision)
    return None


def matmul_block(dtype: torch.dtype, *, size: int, device: torch.device) -> tuple[Callable[[], Any], float]:
    """A timed block for the ceiling: square ``size`` x ``size`` ``torch.mm``s, and their FLOPs (2 n^3 each).

    It runs in the same interleaved rounds as the train steps, so the ceiling sees the same
    neighbours' load as the steps it is compared with. On a GPU one block is several products, so
    that a block lasts milliseconds, not the launch latency.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    calls = 8 if device.type == "cuda" else 1
    torch.mm(a, b)  # first call: kernel selection (cuBLAS, oneDNN / MKL) and page faults

    def block() -> None:
        for _ in range(calls):
            torch.mm(a, b)

    return block, calls * 2.0 * size**3


def model_flops(model: nn.Module, img_size: int) -> float:
    """Forward FLOPs per image of ``model``, counted on a CPU copy in eval mode at batch 2."""
    probe = copy.deepcopy(model).float().cpu().eval()
    return forward_flops(probe, torch.randn(2, 3, img_size, img_size))


def flops_by_device(model: nn.Module, img_size: int, device: torch.device, *, batch: int = 8) -> dict[str, float]:
    """The per-image count on the CPU in eval mode (what MFU uses) and, on a GPU, in eval and training
    mode at ``batch``: a counter that disagrees across devices or modes shows up here."""
    counts = {"cpu_eval": model_flops(model, img_size)}
    if device.type == "cuda":
        probe = copy.deepcopy(model).float().to(device)
        images = torch.randn(batch, 3, img_size, img_size, device=device)
        counts[f"cuda_eval_batch{batch}"] = forward_flops(probe.eval(), images)
        counts[f"cuda_train_batch{batch}"] = forward_flops(probe.train(), images)
    return counts
