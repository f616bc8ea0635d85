"""Timing in interleaved rounds: each kind of block once per round, medians over rounds, per-round ratios.

On a GPU every block is bracketed by ``torch.cuda.synchronize()``: kernels run asynchronously, and a
block's wall time without it measures the launches, not the work.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def load_average() -> float:
    return os.getloadavg()[0]


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for the device's queued work: ``torch.cuda.synchronize`` on a GPU, nothing on a CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class Timings:
    """Per block kind, one entry per round: wall seconds, and the share of the machine this process
    got (its CPU time / (wall time x torch threads)); well below 1 means neighbours took cores. On a
    GPU the share says how busy the host thread was, not the card."""

    seconds: dict[str, list[float]]
    cpu_share: dict[str, list[float]]


def interleaved(
    blocks: dict[str, Callable[[], Any]], *, repeats: int, sync: Callable[[], None] = lambda: None
) -> Timings:
    """Time each block once per round, ``repeats`` rounds, the order reversed every other round.

    Interleaving spreads a neighbour's burst of load over every kind instead of one, and blocks that
    run back to back see nearly the same load, so per-round ratios are far steadier than the rates.
    ``sync`` runs before the clock starts and before it stops (the device's queue drained).
    """
    timings = Timings({name: [] for name in blocks}, {name: [] for name in blocks})
    names = list(blocks)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            gc.collect()
            sync()
            cpu, started = time.process_time(), time.perf_counter()
            blocks[name]()
            sync()
            wall = time.perf_counter() - started
            timings.seconds[name].append(wall)
            timings.cpu_share[name].append((time.process_time() - cpu) / (wall * torch.get_num_threads()))
    return timings


def repeat(step: Callable[[], Any], count: int) -> Callable[[], None]:
    def block() -> None:
        for _ in range(count):
            step()

    return block


def median_rate(seconds: list[float], items: int) -> float:
    return items / statistics.median(seconds)


def paired_ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """Median over rounds of time(slow) / time(fast): a rate ratio fast/slow robust to load drifts."""
    return statistics.median(s / f for s, f in zip(times[slow], times[fast]))
