"""The teacher's accuracy in a distilled run's records (research.launch.train._log_teacher): which
number is of one view, and which is of the run's evaluation views."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from research.launch.train import _log_teacher


class LeftHalf(nn.Module):
    """Class 1 when the left half of the image is brighter: a mirror flips its answer."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 2)
        left, right = images[..., : images.shape[-1] // 2].mean((1, 2, 3)), images[..., images.shape[-1] // 2 :].mean((1, 2, 3))
        return torch.stack([right - left, left - right], dim=1)


@pytest.mark.parametrize("hflip", [False, True])
def test_teacher_top1_says_which_views_it_is_of(hflip: bool) -> None:
    torch.manual_seed(0)
    images = torch.rand(16, 3, 8, 8)
    targets = (images[..., :4].mean((1, 2, 3)) > images[..., 4:].mean((1, 2, 3))).long()
    logged: list[dict[str, Any]] = []
    loop = SimpleNamespace(
        data=SimpleNamespace(val_loader=[(images, targets)]),
        device=torch.device("cpu"),
        options=SimpleNamespace(precision="fp32", eval_hflip=hflip, eval_translate=0),
        tracker=SimpleNamespace(log=lambda record, step: logged.append(record)),
        run_dir=SimpleNamespace(append_metrics=logged.append),
        state=SimpleNamespace(step=0),
        is_main=True,
    )

    _log_teacher(loop, LeftHalf())

    tracked, line = logged
    assert line["epoch"] == 0 and tracked.items() <= line.items()
    assert line["teacher/top1_single_view"] == 100.0  # the student's view of the teacher in training
    # with the run's evaluation views, as val/top1: a mirror averaged in cancels this teacher's logits
    assert (line["teacher/top1"] < 100.0) == hflip
