"""Training hyper-parameters (:class:`TrainConfig`) and their validation.

One flat dataclass, so that a run's settings serialise to JSON (``to_dict``), come back from
YAML/JSON (``from_dict``) and are stored in ``train_state.pt`` to check that a resumed run
continues with the settings it started with.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UserError
from ..measure._device import PRECISIONS, resolve_device

SCHEDULES = ("cosine", "multistep", "constant")
DEVICES = ("auto", "cpu", "cuda")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(float(v)))


@dataclass
class TrainConfig:
    """Settings of one training run (SGD + learning-rate schedule + numerics).

    ``milestones`` are fractions of the whole training (0.5 = half-way), so a schedule keeps its
    shape when ``epochs`` changes. ``warmup_epochs`` may be fractional; warm-up is linear per
    step. ``device="auto"`` picks CUDA when available, else the CPU.
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = field(default=(0.5, 0.75))
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"
    seed: int = 0

    def validate(self) -> TrainConfig:
        """Raise :class:`UserError` naming the first nonsensical value; return ``self``."""
        def bad(name: str, want: str) -> None:
            raise UserError(f"invalid training option {name}={getattr(self, name)!r}: {want}")

        if not _is_int(self.epochs) or self.epochs < 0:
            bad("epochs", "must be an integer >= 0")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            bad("batch_size", "must be an integer >= 1")
        if not _is_real(self.lr) or self.lr <= 0:
            bad("lr", "the learning rate must be a number > 0")
        if not _is_real(self.momentum) or not 0 <= self.momentum < 1:
            bad("momentum", "must be a number in [0, 1)")
        if not isinstance(self.nesterov, bool):
            bad("nesterov", "must be true or false")
        if self.nesterov and self.momentum == 0:
            bad("nesterov", "Nesterov momentum needs momentum > 0; set nesterov to false")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            bad("weight_decay", "must be a number >= 0")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"choose one of {', '.join(SCHEDULES)}")
        ms = self.milestones
        if (not isinstance(ms, (tuple, list)) or not all(_is_real(m) and 0 < m <= 1 for m in ms)
                or list(ms) != sorted(ms)):
            bad("milestones", "must be increasing fractions of training in (0, 1], "
                "e.g. [0.5, 0.75]")
        if not _is_real(self.gamma) or self.gamma <= 0:
            bad("gamma", "the multistep decay factor must be a number > 0")
        if not _is_real(self.warmup_epochs) or self.warmup_epochs < 0:
            bad("warmup_epochs", "must be a number >= 0")
        if _is_int(self.epochs) and self.warmup_epochs > self.epochs:
            bad("warmup_epochs", f"cannot exceed the number of epochs ({self.epochs})")
        if not _is_real(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "must be a number in [0, 1)")
        if self.precision not in PRECISIONS:
            bad("precision", f"choose one of {', '.join(PRECISIONS)}")
        if not isinstance(self.channels_last, bool):
            bad("channels_last", "must be true or false")
        if not isinstance(self.compile, bool):
            bad("compile", "must be true or false")
        if self.device not in DEVICES:
            bad("device", f"choose one of {', '.join(DEVICES)}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("invalid training option device='cuda': no CUDA device is "
                            "available here; use --device cpu (or auto)")
        if not _is_int(self.seed) or self.seed < 0:
            bad("seed", "must be an integer >= 0")
        return self

    def resolve_device(self) -> torch.device:
        """The device this config trains on (``auto``: CUDA if available, else CPU)."""
        return resolve_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (milestones as a list)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build and validate a config; unknown keys are a :class:`UserError`."""
        if not isinstance(d, dict):
            raise UserError(f"training options must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown training option(s) {', '.join(map(repr, unknown))}; "
                            f"known: {', '.join(sorted(known))}")
        d = dict(d)
        if isinstance(d.get("milestones"), list):
            d["milestones"] = tuple(d["milestones"])
        return cls(**d).validate()
