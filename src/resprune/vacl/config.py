"""Options of the VACL pipeline (:class:`VaclConfig`): every default, type and range, once.

``resprune vacl``'s options and YAML keys are these fields (``sparse_epochs`` is
``--sparse-epochs``); the training options of both stages come from ``train``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..train import FADES, TrainConfig
from ..train.fade import check_end
from .regularizer import FORMS, SCORES
from .schedule import LAM_SCHEDULES

#: the pruning rules, exactly one of which a run gives
RULES = ("threshold", "target_params_reduction", "target_macs_reduction", "auto_tolerance")
REG_GROUPS = ("all", "pruned")


@dataclass
class VaclConfig:
    """How VACL sparsity-trains, prunes and fine-tunes (see ``docs/vacl.md``).

    Regularizer: ``lam`` (loss = CE + lam * R), ``beta`` (variance weight), ``form``,
    ``include_bn``, ``include_consumers``; ``reg_groups`` (``all`` | ``pruned``: only the
    groups a dry run of the target removes).
    Lambda schedule: ``lam_schedule`` (``constant`` | ``raise``), ``lam_growth``, ``lam_max``,
    ``near_zero``, ``lam_target_share`` (default: the dry run's share).
    Fade: ``fade`` (``off`` | ``linear``: the groups the target removes fall to exactly zero
    during sparsity training), ``fade_end`` (fraction of the stage's steps).
    Stages: ``sparse_epochs`` / ``sparse_lr``, ``finetune_epochs`` / ``finetune_lr``.
    Pruning: exactly one of ``threshold``, ``target_params_reduction``,
    ``target_macs_reduction``, ``auto_tolerance`` (percentage points of val top-1);
    ``group_score`` ranks the groups; ``round_to=N`` keeps every pruned width a multiple of N
    (runtimes such as onnxruntime compute in blocks of 8 or 16 channels);
    ``max_layer_reduction=F`` removes at most the fraction F of any layer's channels.
    Data: ``epoch_size`` training images per epoch when the pipeline builds the loaders.
    ``train``: optimizer, schedule, batch size, precision, device and seed of both stages
    (their epochs and lr come from the fields above).
    """

    lam: float = 1e-4
    beta: float = 4.0
    form: str = "moments"
    include_bn: bool = True
    include_consumers: bool = False
    reg_groups: str = "all"
    lam_schedule: str = "constant"
    lam_growth: float = 2.0
    lam_max: float | None = None
    near_zero: float = 0.05
    lam_target_share: float | None = None
    fade: str = "off"
    fade_end: float = 0.75
    sparse_epochs: int = 20
    sparse_lr: float = 0.01
    threshold: float | None = None
    target_params_reduction: float | None = None
    target_macs_reduction: float | None = None
    auto_tolerance: float | None = None
    group_score: str = "layer_rms"
    round_to: int | None = None
    max_layer_reduction: float | None = None
    finetune_epochs: int = 20
    finetune_lr: float = 0.01
    epoch_size: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)

    def rule(self) -> dict[str, float]:
        """The one pruning rule, as keyword arguments of :func:`resprune.vacl.prune` (or
        ``auto_tolerance``)."""
        given = {k: float(getattr(self, k)) for k in RULES if getattr(self, k) is not None}
        if len(given) != 1:
            names = ", ".join("--" + k.replace("_", "-") for k in given) or "none"
            raise UserError("give exactly one of --threshold, --target-params-reduction, "
                            f"--target-macs-reduction and --auto-tolerance (got {names})")
        return given

    def stage(self, name: str) -> TrainConfig:
        """The :class:`TrainConfig` of stage ``sparse`` or ``finetune``."""
        return dataclasses.replace(self.train, epochs=getattr(self, f"{name}_epochs"),
                                   lr=getattr(self, f"{name}_lr"))

    def validate(self) -> VaclConfig:
        """Check every option; raise :class:`UserError` naming the first bad one."""
        _choice(self.form, "form", FORMS)
        _choice(self.lam_schedule, "lam_schedule", LAM_SCHEDULES)
        _choice(self.reg_groups, "reg_groups", REG_GROUPS)
        _choice(self.fade, "fade", FADES)
        _choice(self.group_score, "group_score", SCORES)
        for name in ("lam", "beta"):
            _number(getattr(self, name), name, low=0.0)
        _number(self.lam_growth, "lam_growth", low=1.0, open_low=True)
        if self.lam_max is not None:
            _number(self.lam_max, "lam_max", low=0.0, open_low=True)
        _number(self.near_zero, "near_zero", low=0.0, high=1.0, open_low=True, open_high=True)
        if self.lam_target_share is not None:
            _number(self.lam_target_share, "lam_target_share", low=0.0, high=1.0,
                    open_low=True)
        check_end(self.fade_end)
        for name in ("sparse_epochs", "finetune_epochs"):
            _int(getattr(self, name), name, 0)
        for name in ("sparse_lr", "finetune_lr"):
            _number(getattr(self, name), name, low=0.0, open_low=True)
        if self.epoch_size is not None:
            _int(self.epoch_size, "epoch_size", 1)
        if self.round_to is not None:
            _int(self.round_to, "round_to", 1)
        if self.max_layer_reduction is not None:
            _number(self.max_layer_reduction, "max_layer_reduction", low=0.0, high=1.0,
                    open_low=True)
        for name in ("include_bn", "include_consumers"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")
        rule = self.rule()
        (key, value), = rule.items()
        if key.startswith("target_"):
            _number(value, key, low=0.0, high=1.0, open_high=True)
        else:
            _number(value, key, low=0.0)
        needs_target = {"fade": self.fade != "off", "reg_groups": self.reg_groups == "pruned"}
        if not key.startswith("target_"):
            if needs_target["fade"]:
                raise UserError("--fade needs --target-params-reduction or "
                                "--target-macs-reduction: the groups to fade come from a dry "
                                "run of the target")
            if needs_target["reg_groups"] or (self.lam_schedule == "raise"
                                              and self.lam_target_share is None):
                raise UserError("--reg-groups pruned and --lam-schedule raise (without "
                                "--lam-target-share) need a params or MACs target: the groups "
                                "to drive to zero come from a dry run of it")
        if not isinstance(self.train, TrainConfig):
            raise UserError(f"train must be a resprune.train.TrainConfig, got "
                            f"{type(self.train).__name__}")
        self.stage("sparse").validate()
        self.stage("finetune").validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(v: Any, name: str, choices: tuple[str, ...]) -> None:
    if v not in choices:
        raise UserError(f"unknown {name} {v!r}; choose one of: {', '.join(choices)}")


def _int(v: Any, name: str, minimum: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {v!r}")


def _number(v: Any, name: str, *, low: float | None = None, high: float | None = None,
            open_low: bool = False, open_high: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if open_low else v >= low
    if ok and high is not None:
        ok = v < high if open_high else v <= high
    if not ok:
        lo = "" if low is None else f"{'>' if open_low else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if open_high else '<='} {high:g}"
        raise UserError(f"{name} must be a number {' and '.join(x for x in (lo, hi) if x)}, "
                        f"got {v!r}")
