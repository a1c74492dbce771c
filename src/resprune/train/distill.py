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

``features`` (beta > 0) adds feature distillation at every residual unit: the output of each
unit the student and the teacher both have (an erased unit of either is skipped) is pulled to
the teacher's, channel for channel, as a squared error relative to the teacher's energy,
``beta * mean_units(mean((f_s - f_t)^2) / mean(f_t^2))``. It needs residual streams as wide
as the teacher's: a student pruned from it whose stream channels were all kept (VACL ranked
with ``--cost none`` removes no cross-layer group on the converged ResNet-56), so channel ``c``
still carries what it carried in the teacher.
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
    distill_features: float = opt(
        0.0, "weight of feature distillation: every residual unit's output pulled to the "
        "teacher's, channel for channel (squared error over the teacher's energy; needs "
        "residual streams as wide as the teacher's); 0 = off", Float(0))

    def validate(self) -> DistillConfig:
        check_fields(self)
        return self


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W]``: the mean over channels of ``f^2``, L2-normalised per
    image (float32)."""
    return F.normalize(f.float().square().mean(1).flatten(1), dim=1)


def _stages(model: nn.Module, who: str) -> list[tuple[str, nn.Module]]:
    n = getattr(model, "num_stages", None)
    if not isinstance(n, int) or not all(hasattr(model, f"layer{i + 1}") for i in range(n)):
        raise UserError(f"attention transfer reads the stage outputs layer1 ... layerN of a "
                        f"resprune ResNet; the {who} has none")
    return [(f"layer{i + 1}", getattr(model, f"layer{i + 1}")) for i in range(n)]


def _units(model: nn.Module, who: str) -> list[tuple[str, nn.Module]]:
    """The units feature distillation reads: every unit slot that is not erased."""
    units = getattr(model, "units", None)
    if not callable(units):
        raise UserError(f"feature distillation reads the residual units of a resprune "
                        f"ResNet; the {who} has none")
    return [(name, m) for name, m in units() if not isinstance(m, nn.Identity)]


def relative_error(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """``mean((fs - ft)^2) / mean(ft^2)`` in float32 (the teacher's energy is a constant)."""
    ft = ft.float()
    return (fs.float() - ft).square().mean() / ft.square().mean().clamp_min(1e-12)


class Distillation:
    """A frozen teacher plus the KD loss; ``alpha`` in [0, 1], ``temperature`` > 0,
    ``attention`` (attention transfer's beta) >= 0, ``features`` (feature distillation's
    beta) >= 0. With either of the last two the student's stage / unit outputs are read by
    forward hooks that :meth:`attach` puts on it (the Trainer does)."""

    def __init__(self, teacher: nn.Module, alpha: float = 0.7, temperature: float = 4.0,
                 attention: float = 0.0, features: float = 0.0):
        DistillConfig(distill_alpha=alpha, distill_temperature=temperature,
                      distill_attention=attention, distill_features=features).validate()
        self.teacher = copy.deepcopy(teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.attention = float(attention)
        self.features = float(features)
        self.seconds = 0.0  # teacher forward time since the last reset
        # the inner terms' sums and steps since the reset, by the name metrics.jsonl gives them
        self._tally: dict[str, list] = {}
        # the last training forward's tapped outputs, by module name
        self._outputs: dict[str, dict[str, torch.Tensor | None]] = {"student": {},
                                                                   "teacher": {}}
        self._hooks: list = []
        self._pairs: dict[str, list[str]] = {"attention": [], "features": []}
        self._teacher_taps = self._watch(self.teacher, "teacher")

    def reset(self) -> None:
        """Start a new epoch's tallies (teacher time, inner losses)."""
        self.seconds = 0.0
        self._tally = {}

    def inner_means(self) -> dict[str, float]:
        """The mean of each inner term since :meth:`reset`, by its metrics.jsonl name
        (``attention_loss``, ``feature_loss``); the terms that are off are left out."""
        return {k: float(total) / steps for k, (total, steps) in self._tally.items()}

    def _taps(self, model: nn.Module, who: str) -> dict[str, dict[str, nn.Module]]:
        """The modules each inner term reads, by term and module name (none when it is off)."""
        return {"attention": dict(_stages(model, who)) if self.attention > 0 else {},
                "features": dict(_units(model, who)) if self.features > 0 else {}}

    def _watch(self, model: nn.Module, who: str) -> dict[str, list[str]]:
        """Hook ``model``'s tapped modules; return their names by term."""
        taps = self._taps(model, who)
        modules = {name: m for term in taps.values() for name, m in term.items()}
        store = self._outputs[who] = dict.fromkeys(modules)

        def hook(name: str):
            def keep(module, inputs, output):
                if who == "teacher" or (module.training and torch.is_grad_enabled()):
                    store[name] = output
            return keep

        handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
        if who == "student":
            self._hooks = handles
        return {term: list(names) for term, names in taps.items()}

    def attach(self, student: nn.Module) -> None:
        """Read ``student``'s stage / unit outputs in its training forwards (attention transfer
        and feature distillation only; hooks put on an earlier student are removed)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self.attention == 0 and self.features == 0:
            return
        taps, teacher = self._watch(student, "student"), self._teacher_taps
        if len(taps["attention"]) != len(teacher["attention"]):
            raise UserError(f"attention transfer pairs stages: the student has "
                            f"{len(taps['attention'])}, the teacher {len(teacher['attention'])}")
        self._pairs = {"attention": taps["attention"],
                       "features": [n for n in taps["features"] if n in teacher["features"]]}
        if self.features > 0 and not self._pairs["features"]:
            raise UserError("feature distillation: the student and the teacher share no "
                            "residual unit (by name)")

    def _add(self, key: str, loss: torch.Tensor) -> torch.Tensor:
        total, steps = self._tally.get(key, (0.0, 0))
        self._tally[key] = [total + loss.detach(), steps + 1]
        return loss

    def _pair(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's and the teacher's last output of ``name`` (released from the store:
        each is read once)."""
        fs, ft = self._outputs["student"].get(name), self._outputs["teacher"].get(name)
        self._outputs["student"][name] = self._outputs["teacher"][name] = None
        if fs is None or ft is None:
            raise UserError("attention transfer / feature distillation: call attach(student) "
                            "and run the student's training forward before the loss")
        return fs, ft

    def attention_loss(self) -> torch.Tensor:
        """``beta / 2 * sum_stages mean((q_s - q_t)^2)`` of the last student and teacher
        forwards."""
        total = None
        for i, name in enumerate(self._pairs["attention"]):
            fs, ft = self._pair(name)
            if fs.shape[2:] != ft.shape[2:]:
                raise UserError(f"attention transfer: stage {i + 1} outputs {tuple(fs.shape[2:])} "
                                f"positions in the student, {tuple(ft.shape[2:])} in the teacher")
            term = (attention_map(fs) - attention_map(ft)).square().mean()
            total = term if total is None else total + term
        return self._add("attention_loss", self.attention / 2 * total)

    def feature_loss(self) -> torch.Tensor:
        """``beta * mean_units(mean((f_s - f_t)^2) / mean(f_t^2))`` of the last student and
        teacher forwards, over the units both have."""
        total = None
        for name in self._pairs["features"]:
            fs, ft = self._pair(name)
            if fs.shape != ft.shape:
                raise UserError(f"feature distillation pairs every unit's output channel for "
                                f"channel: unit {name} outputs {tuple(fs.shape[1:])} in the "
                                f"student, {tuple(ft.shape[1:])} in the teacher (a pruned "
                                f"residual stream; use --distill-attention instead)")
            term = relative_error(fs, ft)
            total = term if total is None else total + term
        return self._add("feature_loss",
                         self.features * total / len(self._pairs["features"]))

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
        if self.alpha == 0 and self.attention == 0 and self.features == 0:
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
        if self.features > 0:
            out = out + self.feature_loss()
        return out
