"""Training hyper-parameters (:class:`TrainConfig`) and their validation.

One flat dataclass, so that a run's settings serialise to JSON (``to_dict``), come back from
YAML/JSON (``from_dict``) and are stored in ``train_state.pt`` to check that a resumed run
continues with the settings it started with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UserError
from ..fields import Choice, Flag, Float, Floats, Int, check_fields, opt
from ..measure._device import PRECISIONS, resolve_device

SCHEDULES = ("cosine", "multistep", "constant")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Settings of one training run (SGD + learning-rate schedule + numerics).

    Every field's type, range and help is declared once, here (:func:`resprune.fields.opt`);
    the command-line options and YAML keys of ``train`` (and the training options of every
    command that retrains) are generated from them. ``milestones`` are fractions of the whole
    training (0.5 = half-way), so a schedule keeps its shape when ``epochs`` changes.
    ``warmup_epochs`` may be fractional; warm-up is linear per step. ``device="auto"`` picks
    CUDA when available, else the CPU.
    """

    epochs: int = opt(30, "epochs", Int(0))
    batch_size: int = opt(128, "batch size (under torchrun: the global batch, split evenly "
                          "over the processes)", Int(1))
    lr: float = opt(0.1, "peak learning rate", Float(0, open_low=True))
    momentum: float = opt(0.9, "SGD momentum", Float(0, 1, open_high=True))
    nesterov: bool = opt(True, "Nesterov momentum", Flag())
    weight_decay: float = opt(5e-4, "weight decay", Float(0))
    schedule: str = opt("cosine", "learning-rate schedule", Choice(SCHEDULES, label="schedule"))
    milestones: tuple[float, ...] = opt((0.5, 0.75), "multistep milestones as fractions of "
                                        "training", Floats(0, 1))
    gamma: float = opt(0.1, "multistep decay factor", Float(0, open_low=True))
    warmup_epochs: float = opt(0.0, "linear warm-up epochs (may be fractional)", Float(0))
    label_smoothing: float = opt(0.0, "label smoothing", Float(0, 1, open_high=True))
    mixup: float = opt(0.0, "mixup: every training batch blended with a permutation of "
                       "itself, weight ~ Beta(ALPHA, ALPHA), and the loss with both labels; "
                       "under distillation the teacher sees the mixed batch (1.0 is common; "
                       "0 = off)", Float(0), metavar="ALPHA")
    precision: str = opt("fp32", "fp32, or bf16 autocast on CPU and CUDA. On a CPU without "
                         "native bf16 (no AVX-512 BF16 / AMX) bf16 is emulated, about 15x "
                         "slower: resprune says so and trains in fp32 unless --force-bf16 is "
                         "given", Choice(PRECISIONS, label="precision"))
    channels_last: bool = opt(False, "channels_last memory format", Flag())
    compile: bool = opt(False, "torch.compile the model", Flag())
    sync_bn: bool = opt(False, "under torchrun: BatchNorm statistics over the global batch "
                        "(as one process would compute them) instead of each process's "
                        "slice; no effect in one process", Flag())
    device: str = opt("auto", "auto = cuda when available", Choice(DEVICES, label="device"))
    seed: int = opt(0, "seed for weights, validation split, shuffling and augmentation",
                    Int(0))

    def validate(self) -> TrainConfig:
        """Raise :class:`UserError` naming the first nonsensical value; return ``self``."""
        check_fields(self, "training option ")
        if self.nesterov and self.momentum == 0:
            raise UserError("training option nesterov: Nesterov momentum needs momentum > 0; "
                            "set nesterov to false")
        if self.warmup_epochs > self.epochs:
            raise UserError(f"training option warmup_epochs={self.warmup_epochs!r} cannot "
                            f"exceed the number of epochs ({self.epochs})")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("invalid training option device='cuda': no CUDA device is "
                            "available here; use --device cpu (or auto)")
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
