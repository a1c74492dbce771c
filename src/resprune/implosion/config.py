"""Options of the Network Implosion loop (:class:`ImplosionConfig`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..train import TrainConfig
from ..train.fade import check_end
from .scores import SCORE_METHODS

ERASE_MODES = ("cut", "fade")


@dataclass
class ImplosionConfig:
    """How units are scored, erased, retrained and accepted.

    score: priority term (``gate`` = |w|, ``norm``, ``gate_bn``, ``random``; see
        :mod:`resprune.implosion.scores`). score_batches: batches of the training loader the
        ``norm`` score reads.
    per_step: units erased per step (the k lowest priorities).
    retrain_epochs / retrain_lr: the short retraining after each erasure, at a lowered
        learning rate (no warm-up).
    tolerance: accept a step when val top-1 >= baseline val top-1 - tolerance, in percentage
        points (>= 0; 0.5 allows 93.0 % -> 92.5 %); otherwise roll back to the last accepted
        net. patience: stop after this many rejected steps in a row (1: at the first, the
        original rule); after a rejection the rejected units are no longer candidates, so the
        next step tries the next-lowest priorities.
    screen: before retraining, erase each of the ``screen`` lowest-priority candidates alone
        and measure the validation loss on ``screen_batches`` batches (no training); erase
        the ``per_step`` whose removal costs least. 0 (default): erase by priority alone. On
        a converged net this is cheap and catches units whose gate is small but whose
        removal hurts.
    erase: how a step removes its units. ``cut`` (default, the paper's order): replace them by
        identities, then retrain. ``fade``: retrain first while their priority gates fall
        linearly to exactly zero (:class:`resprune.train.Fade`; zero after ``fade_end`` of
        the retraining's steps), then replace them by identities, which changes no output;
        the net learns to do without them gradually instead of recovering from a cut.
    target_depth: stop once the net has at most this many weight layers (a step erases no
        more units than needed to reach it). max_steps: stop after this many steps.
    final_epochs / final_lr: optional longer retrain of the final net (final_lr defaults to
        retrain_lr).
    adapt_epochs / adapt_lr: when the model arrives without gates, they are added (w = 1,
        exact) and trained this long so they can adapt (adapt_lr defaults to retrain_lr).
    fold: fold the surviving gates into their branch's last BN at the end (exported nets
        carry no extra op).
    seed: seeds every retraining (step k uses seed + k), the ``random`` score and the batches
        the ``norm`` score reads, so a resumed run repeats an uninterrupted one.
    train: base :class:`resprune.train.TrainConfig` (optimizer, schedule, batch size,
        precision, device) for every retraining; epochs, lr, warm-up and seed are set by the
        fields above.
    """

    score: str = "gate"
    per_step: int = 1
    retrain_epochs: int = 10
    retrain_lr: float = 0.01
    tolerance: float = 0.0
    patience: int = 1
    screen: int = 0
    screen_batches: int = 4
    erase: str = "cut"
    fade_end: float = 0.75
    target_depth: int | None = None
    max_steps: int | None = None
    final_epochs: int = 0
    final_lr: float | None = None
    adapt_epochs: int = 5
    adapt_lr: float | None = None
    score_batches: int = 4
    fold: bool = True
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> ImplosionConfig:
        """Check every option; raise :class:`UserError` naming the first bad one."""
        if self.score not in SCORE_METHODS:
            raise UserError(f"unknown priority score {self.score!r}; choose one of: "
                            f"{', '.join(SCORE_METHODS)}")
        _int(self.per_step, "per_step", 1, " (units erased per step)")
        if self.erase not in ERASE_MODES:
            raise UserError(f"unknown erase mode {self.erase!r}; choose one of: "
                            f"{', '.join(ERASE_MODES)}")
        check_end(self.fade_end)
        if self.erase == "fade" and self.retrain_epochs == 0:
            raise UserError("erase fade fades the units during the retraining: give "
                            "retrain_epochs >= 1")
        _int(self.retrain_epochs, "retrain_epochs", 0)
        _int(self.final_epochs, "final_epochs", 0)
        _int(self.adapt_epochs, "adapt_epochs", 0)
        _int(self.score_batches, "score_batches", 1)
        _int(self.patience, "patience", 1, " (rejected steps in a row before stopping)")
        _int(self.screen, "screen", 0, " (candidates screened by validation loss; 0 = off)")
        _int(self.screen_batches, "screen_batches", 1)
        _int(self.seed, "seed", 0)
        if self.target_depth is not None:
            _int(self.target_depth, "target_depth", 1, " (weight layers) or None")
        if self.max_steps is not None:
            _int(self.max_steps, "max_steps", 1, " or None")
        _lr(self.retrain_lr, "retrain_lr")
        for name in ("final_lr", "adapt_lr"):
            if getattr(self, name) is not None:
                _lr(getattr(self, name), name)
        tol = self.tolerance
        if (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol)
                or tol < 0):
            raise UserError(f"tolerance must be a number >= 0 (percentage points of validation "
                            f"top-1 the net may lose), got {tol!r}")
        if not isinstance(self.fold, bool):
            raise UserError(f"fold must be true or false, got {self.fold!r}")
        if not isinstance(self.train, TrainConfig):
            raise UserError(f"train must be a resprune.train.TrainConfig, got "
                            f"{type(self.train).__name__}")
        # epochs, lr, warm-up and seed are set per retraining
        dataclasses.replace(self.train, warmup_epochs=0).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _int(v: Any, name: str, minimum: int, what: str = "") -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}{what}, got {v!r}")


def _lr(v: Any, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise UserError(f"{name} must be a learning rate > 0, got {v!r}")
