"""airbench's Lookahead: slow weights whose inertia grows over the run (Jordan 2024, arXiv:2404.00498).

Lookahead (Zhang et al. 2019) keeps a slow copy of the weights; every ``k`` optimizer steps the
slow copy moves towards the fast weights by ``alpha`` and the fast weights restart from it. timm's
:class:`~timm.optim.lookahead.Lookahead` does that with a constant ``alpha`` (0.5). airbench instead
makes the slow copy an exponential moving average whose decay rises with the cube of the run's
progress, ``decay = max_decay * (step / total_steps) ** 3`` (``max_decay`` 0.95**5): early on the
slow copy follows the fast weights (decay about 0), so fast early progress is not held back, and near
the end it averages over the last few syncs, as an EMA of the weights would. The last step always
syncs, so the trained network is the slow copy.

Only parameters take part (a BatchNorm's running statistics keep following the fast weights), and the
slow copies live in the optimizer's state, so a checkpoint and a resumed run keep them.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.optim.lookahead import Lookahead

__all__ = ["AIRBENCH_MAX_DECAY", "ScheduledLookahead"]

AIRBENCH_MAX_DECAY = 0.95**5  # airbench94's decay at the end of the run, for a sync every 5 steps


class ScheduledLookahead(Lookahead):
    """timm's Lookahead with airbench's rising decay; ``total_steps`` is the run's optimizer steps.

    Args:
        base_optimizer: The optimizer that moves the fast weights.
        total_steps: Optimizer steps in the whole run (epochs x steps per epoch).
        k: Steps between syncs (airbench: 5).
        max_decay: The slow copy's decay at the last step; 0 turns the averaging off.
        power: How the decay rises with progress (airbench: 3).
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        *,
        total_steps: int,
        k: int = 5,
        max_decay: float = AIRBENCH_MAX_DECAY,
        power: float = 3.0,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"max_decay must be in [0, 1), got {max_decay}")
        super().__init__(base_optimizer, alpha=1.0, k=k)
        self.total_steps = total_steps
        self.max_decay = max_decay
        self.power = power

    def decay(self, step: int) -> float:
        """The slow copy's decay at a sync after ``step`` optimizer steps."""
        progress = min(step, self.total_steps) / self.total_steps
        return self.max_decay * progress**self.power

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        # The slow copy starts from the initial weights (airbench), not from the weights of the first
        # sync (timm); it joins the optimizer's state after the first step, where Adam's would be made.
        initial = [
            (p, p.detach().clone()) for group in self.param_groups if group["lookahead_step"] == 0 for p in group["params"]
        ]
        loss = self._base_optimizer.step(closure)
        for p, weights in initial:
            self._base_optimizer.state[p].setdefault("lookahead_slow_buff", weights)
        for group in self._base_optimizer.param_groups:
            group["lookahead_step"] += 1
            step = group["lookahead_step"]
            if step % group["lookahead_k"] == 0 or step == self.total_steps:
                group["lookahead_alpha"] = 1.0 - self.decay(step)
                self.update_slow(group)
        return loss
