"""Knowledge distillation from a teacher: the main lever when recovery budgets are short.

``loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher / T) ||
softmax(student / T))`` (Hinton et al. 2015). The teacher runs in eval mode without gradients
on the very batch the student sees (same augmentation), so its BN statistics never change;
its forward time is measured and reported per epoch (``teacher_seconds``).

``attention`` (beta > 0) adds attention transfer (Zagoruyko & Komodakis, ICLR 2017): at the
output of every stage (``layer1`` ... ``layerN``) each image's spatial attention map
``q = normalize(mean_c(f_c^2))`` of the student is pulled to the teacher's,
``beta / 2 * sum_stages mean((q_s - q_t)^2)``. A map has one value per position whatever the
channel count, so it needs no adapter between a pruned student and its unpruned teacher, and
it gives the student a target inside the network, not only at its logits.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
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
    distill_attention: float = opt(
        0.0, "weight beta of attention transfer: every stage output's spatial attention map "
        "pulled to the teacher's (1000 in Zagoruyko & Komodakis 2017); 0 = off", Float(0))

    def validate(self) -> DistillConfig:
        check_fields(self)
        return self


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W]``: the mean over channels of ``f^2``, L2-normalised per
    image (float32)."""
    return F.normalize(f.float().square().mean(1).flatten(1), dim=1)


def _stages(model: nn.Module, who: str) -> list[nn.Module]:
    n = getattr(model, "num_stages", None)
    if not isinstance(n, int) or not all(hasattr(model, f"layer{i + 1}") for i in range(n)):
        raise UserError(f"attention transfer reads the stage outputs layer1 ... layerN of a "
                        f"resprune ResNet; the {who} has none")
    return [getattr(model, f"layer{i + 1}") for i in range(n)]


class Distillation:
    """A frozen teacher plus the KD loss; ``alpha`` in [0, 1], ``temperature`` > 0,
    ``attention`` (attention transfer's beta) >= 0. With ``attention`` the student's stage
    outputs are read by forward hooks that :meth:`attach` puts on it (the Trainer does)."""

    def __init__(self, teacher: nn.Module, alpha: float = 0.7, temperature: float = 4.0,
                 attention: float = 0.0):
        DistillConfig(distill_alpha=alpha, distill_temperature=temperature,
                      distill_attention=attention).validate()
        self.teacher = copy.deepcopy(teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.attention = float(attention)
        self.seconds = 0.0  # teacher forward time since the last reset
        self._attention_sum: torch.Tensor | None = None  # attention losses since the reset
        self._attention_steps = 0
        self._features: dict[str, list[torch.Tensor | None]] = {"student": [], "teacher": []}
        self._hooks: list = []
        if self.attention > 0:
            self._watch(self.teacher, "teacher")

    def reset(self) -> None:
        """Start a new epoch's tallies (teacher time, attention loss)."""
        self.seconds = 0.0
        self._attention_sum, self._attention_steps = None, 0

    def attention_mean(self) -> float | None:
        """The mean attention-transfer loss since :meth:`reset` (None without any)."""
        if self._attention_sum is None:
            return None
        return float(self._attention_sum) / self._attention_steps

    def _watch(self, model: nn.Module, who: str) -> None:
        stages = _stages(model, who)
        store = self._features[who] = [None] * len(stages)

        def hook(i: int):
            def keep(module, inputs, output):
                if who == "teacher" or (module.training and torch.is_grad_enabled()):
                    store[i] = output
            return keep

        handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(stages)]
        if who == "student":
            self._hooks = handles

    def attach(self, student: nn.Module) -> None:
        """Read ``student``'s stage outputs in its training forwards (attention transfer
        only; hooks put on an earlier student are removed)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self.attention > 0:
            self._watch(student, "student")
            if len(self._features["student"]) != len(self._features["teacher"]):
                raise UserError(f"attention transfer pairs stages: the student has "
                                f"{len(self._features['student'])}, the teacher "
                                f"{len(self._features['teacher'])}")

    def attention_loss(self) -> torch.Tensor:
        """``beta / 2 * sum_stages mean((q_s - q_t)^2)`` of the last student and teacher
        forwards (the stored outputs are released)."""
        total = None
        pairs = zip(self._features["student"], self._features["teacher"])
        for i, (fs, ft) in enumerate(pairs):
            if fs is None or ft is None:
                raise UserError("attention transfer: call attach(student) and run the "
                                "student's training forward before the loss")
            if fs.shape[2:] != ft.shape[2:]:
                raise UserError(f"attention transfer: stage {i + 1} outputs {tuple(fs.shape[2:])} "
                                f"positions in the student, {tuple(ft.shape[2:])} in the teacher")
            term = (attention_map(fs) - attention_map(ft)).square().mean()
            total = term if total is None else total + term
        for store in self._features.values():
            store[:] = [None] * len(store)
        loss = self.attention / 2 * total
        tally = loss.detach()
        self._attention_sum = tally if self._attention_sum is None else self._attention_sum + tally
        self._attention_steps += 1
        return loss

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
        if self.alpha == 0 and self.attention == 0:
            return ce
        teacher = self.teacher_logits(x)
        out = ce
        if self.alpha > 0:
            t = self.temperature
            soft = F.kl_div(F.log_softmax(student_logits / t, dim=1),
                            F.log_softmax(teacher / t, dim=1),
                            reduction="batchmean", log_target=True) * (t * t)
            out = (1 - self.alpha) * ce + self.alpha * soft
        if self.attention > 0:
            out = out + self.attention_loss()
        return out
