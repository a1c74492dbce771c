"""Knowledge distillation from a teacher: the main lever when recovery budgets are short.

``loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) ||
softmax(student / T))`` (Hinton et al. 2015). The teacher runs in eval mode without gradients
on the very batch the student sees (same augmentation), so its BN statistics never change;
its forward time is measured and reported per epoch (``teacher_seconds``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..fields import Float, Text, check_fields, opt


@dataclass
class DistillConfig:
    """The distillation options of every command that retrains (the command line's
    ``--distill-*``; the library takes a :class:`Distillation` built from a teacher)."""

    distill_from: str | None = opt(
        None, "distil from this run's model as teacher (frozen, eval mode, same batches); "
        "'input' = the command's input model (train: --init); 'none' = off (default)",
        Text(optional=True), metavar="RUN|input")
    distill_alpha: float = opt(0.7, "weight of the teacher's soft targets; 1 - alpha goes to "
                               "the labels", Float(0, 1))
    distill_temperature: float = opt(4.0, "softmax temperature of the soft targets",
                                     Float(0, open_low=True))

    def validate(self) -> DistillConfig:
        check_fields(self)
        return self


class Distillation:
    """A frozen teacher plus the KD loss; ``alpha`` in [0, 1], ``temperature`` > 0."""

    def __init__(self, teacher: nn.Module, alpha: float = 0.7, temperature: float = 4.0):
        DistillConfig(distill_alpha=alpha, distill_temperature=temperature).validate()
        self.teacher = copy.deepcopy(teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.seconds = 0.0  # teacher forward time since the last reset

    def to(self, device: torch.device, channels_last: bool = False) -> Distillation:
        self.teacher.to(device)
        if channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        return self

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.teacher(x).float()
        self.seconds += time.perf_counter() - t0
        return out

    def loss(self, student_logits: torch.Tensor, x: torch.Tensor,
             ce: torch.Tensor) -> torch.Tensor:
        """The combined loss for one batch, given the student's logits and its CE loss."""
        if self.alpha == 0:
            return ce
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student_logits / t, dim=1),
                        F.log_softmax(self.teacher_logits(x) / t, dim=1),
                        reduction="batchmean", log_target=True) * (t * t)
        return (1 - self.alpha) * ce + self.alpha * soft
