"""The epoch's loss sums on the device, read once per log window and once per epoch (the loop's meter)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist


class StepMeter:
    """Sums of the loss, its parts and the non-finite steps, over the log window and the epoch.

    The sums are device tensors that each step adds to without a sync; :meth:`window` and
    :meth:`epoch` read them, once each. A part (``LossOutput.logs["loss/distill"]``) is logged as
    ``train/loss/distill`` per window and ``train/epoch_loss/distill`` per epoch.
    """

    def __init__(self, device: torch.device, images_per_step: int) -> None:
        self.device, self.images_per_step = device, images_per_step
        self.keys: list[str] = []  # "loss", then the objective's parts
        self.window_sums: torch.Tensor | None = None  # (2 + parts,): non-finite count, loss, parts
        self.epoch_sums: torch.Tensor | None = None
        self.window_steps = self.epoch_steps = 0
        self.resumed_steps = 0  # steps of this epoch counted in a checkpoint's sums (resume_epoch)
        self.window_started = self.epoch_started = time.perf_counter()

    def add(self, loss: torch.Tensor, logs: Mapping[str, torch.Tensor]) -> None:
        if not self.keys:
            self.keys = ["loss", *logs]
        loss = loss.float()
        values = torch.stack([(~torch.isfinite(loss)).float(), loss, *(logs[key].float() for key in self.keys[1:])])
        self.window_sums = values.clone() if self.window_sums is None else self.window_sums.add_(values)
        self.epoch_sums = values.clone() if self.epoch_sums is None else self.epoch_sums.add_(values)
        self.window_steps += 1
        self.epoch_steps += 1

    def partial_epoch(self, step: int) -> dict[str, Any] | None:
        """This rank's epoch sums so far, as plain data for a checkpoint (one sync: saves only); raises
        if a step of this epoch had a non-finite loss."""
        if self.epoch_sums is None:
            return None
        sums = self.epoch_sums.tolist()
        self._check(sums[0], step)
        return {"keys": list(self.keys), "sums": sums, "steps": self.epoch_steps + self.resumed_steps}

    def resume_epoch(self, saved: Mapping[str, Any]) -> None:
        """Start from a checkpoint's :meth:`partial_epoch`: the epoch's loss counts the steps before the resume.

        On one process the resumed epoch's ``train/epoch_loss`` is then the uninterrupted run's. Under
        DDP only rank 0's sums are saved (a preemption saves on rank 0 alone), so the epoch's mean also
        counts rank 0's steps from before the resume, and the other ranks' steps after it only.
        """
        self.keys = list(saved["keys"])
        self.epoch_sums = torch.tensor(saved["sums"], device=self.device)
        self.resumed_steps = int(saved["steps"])

    def window(self, step: int) -> dict[str, float]:
        """``train/loss`` (and its parts) and ``train/images_per_s`` since the last call; raises on a
        non-finite step."""
        now = time.perf_counter()
        sums = self.window_sums.tolist() if self.window_sums is not None else [0.0]
        steps = self.window_steps
        rate = steps * self.images_per_step / max(now - self.window_started, 1e-9)
        self.window_sums, self.window_steps, self.window_started = None, 0, now
        self._check(sums[0], step)
        record = {f"train/{key}": total / max(steps, 1) for key, total in zip(self.keys, sums[1:])}
        return {**record, "train/images_per_s": rate}

    def epoch(self, step: int) -> dict[str, float]:
        """The epoch's mean loss and parts over every rank, and its throughput; raises on a non-finite step."""
        sums = self.epoch_sums if self.epoch_sums is not None else torch.zeros(1, device=self.device)
        totals = torch.cat([sums, torch.tensor([float(self.epoch_steps + self.resumed_steps)], device=self.device)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)  # the epoch's loss over every rank, not rank 0's share
        *values, steps = totals.tolist()
        self._check(values[0], step)
        record = {f"train/epoch_{key}": total / max(steps, 1) for key, total in zip(self.keys, values[1:])}
        rate = self.epoch_steps * self.images_per_step / max(time.perf_counter() - self.epoch_started, 1e-9)
        return {**record, "train/epoch_images_per_s": rate}

    def _check(self, nonfinite: float, step: int) -> None:
        if nonfinite:
            raise FloatingPointError(
                f"the train loss was not finite in {nonfinite:.0f} step(s) before step {step}; "
                "lower optim.lr, set optim.clip_grad or use train.precision=fp32"
            )
