"""Learning rate as a pure function of the global step.

The rate at step ``s`` (0-based, counted over the whole run) depends on nothing but ``s`` and
the settings, so a resumed run needs no scheduler state: it recomputes the rate from the step
number it restored. :class:`LRSchedule` can also be used as the ``lr_lambda`` of
``torch.optim.lr_scheduler.LambdaLR`` (it returns the multiplier of the base rate).

Shapes (``T`` total steps, ``W`` warm-up steps):

- warm-up: the multiplier is ``(s + 1) / W`` for ``s < W`` (linear, per step), times the
  schedule below;
- ``cosine``: ``0.5 * (1 + cos(pi * (s - W) / (T - W)))`` after warm-up, 1 during it;
- ``multistep``: ``gamma ** k`` where ``k`` counts the milestones ``round(f * T)`` already
  reached (``s >= round(f * T)``);
- ``constant``: 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import UserError
from .config import SCHEDULES, TrainConfig


def lr_factor(step: int, total_steps: int, schedule: str = "cosine", warmup_steps: int = 0,
              milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate at global step ``step`` (0-based)."""
    if schedule not in SCHEDULES:
        raise UserError(f"unknown learning-rate schedule {schedule!r}; "
                        f"choose one of {', '.join(SCHEDULES)}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    factor = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        factor = (step + 1) / warmup_steps
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, max(0.0, (step - warmup_steps) / span))
        factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "multistep":
        reached = sum(1 for f in milestones if step >= round(f * total_steps))
        factor *= gamma ** reached
    return factor


class LRSchedule:
    """The schedule of a :class:`TrainConfig` for a loader of ``steps_per_epoch`` batches."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int):
        self.base_lr = float(config.lr)
        self.schedule = config.schedule
        self.milestones = tuple(config.milestones)
        self.gamma = float(config.gamma)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)

    def factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.schedule, self.warmup_steps,
                         self.milestones, self.gamma)

    __call__ = factor  # LambdaLR(optimizer, lr_lambda=schedule)

    def lr(self, step: int) -> float:
        """Absolute learning rate at global step ``step``."""
        return self.base_lr * self.factor(step)
