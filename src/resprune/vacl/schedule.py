"""Lambda schedules for sparsity training, so that pruning removes groups already near zero.

With a constant lambda and a short budget, the groups pruning removes may still be far from
zero: accuracy right after pruning collapses and fine-tuning starts from a damaged net.
``raise`` multiplies lambda by ``growth`` at the end of every epoch in which fewer than
``target_share`` of the channel groups are *near zero*, i.e. whose RMS norm has fallen below
``near_zero`` times its own value at the start of sparsity training, never above ``max_lam``
(a lambda too strong for the data collapses the net: on the converged ResNet-56, 2e-3 cost 12
points of validation accuracy in one epoch and 4e-3 fell to chance). ``target_share`` is the
share of groups the pruning rule will remove (the CLI measures it by a dry run of the rule on
the input model). Every epoch record gets ``lam`` and ``near_zero_share``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from ..train import Callback
from .regularizer import Regularizer, group_scores

LAM_SCHEDULES = ("constant", "raise")


def near_zero_share(model, reg: Regularizer, initial: torch.Tensor, near_zero: float) -> float:
    """Share of groups whose RMS is below ``near_zero`` x its value in ``initial`` (of the
    regularized groups only, when the regularizer has a selection)."""
    now = group_scores(model, reg.groups, reg.include_bn, reg.include_consumers, "rms")
    hit = (now <= near_zero * initial).double()
    mask = getattr(reg, "mask", None)
    if mask is not None and float(mask.sum()) > 0:
        return float((hit * mask).sum() / mask.sum())
    return float(hit.mean())


class LamSchedule(Callback):
    """A training callback that adapts ``reg.lam`` (see the module docstring)."""

    def __init__(self, reg: Regularizer, mode: str = "constant", growth: float = 2.0,
                 target_share: float | None = None, near_zero: float = 0.05,
                 max_lam: float | None = None):
        if mode not in LAM_SCHEDULES:
            raise UserError(f"unknown lambda schedule {mode!r}; choose one of "
                            f"{', '.join(LAM_SCHEDULES)}")
        if not growth > 1:
            raise UserError(f"lambda growth must be > 1, got {growth}")
        if not 0 < near_zero < 1:
            raise UserError(f"near-zero fraction must be in (0, 1), got {near_zero}")
        if mode == "raise" and (target_share is None or not 0 < target_share <= 1):
            raise UserError("the raise schedule needs the share of groups pruning removes "
                            f"(target_share in (0, 1]), got {target_share}")
        self.reg, self.mode, self.growth = reg, mode, float(growth)
        self.target_share, self.near_zero = target_share, near_zero
        self.max_lam = float("inf") if max_lam is None else float(max_lam)
        self.initial: torch.Tensor | None = None

    def on_fit_start(self, trainer) -> None:
        if self.initial is None:  # a resumed run restored it
            self.initial = group_scores(trainer.model, self.reg.groups, self.reg.include_bn,
                                        self.reg.include_consumers, "rms")

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        assert self.initial is not None
        share = near_zero_share(trainer.model, self.reg, self.initial, self.near_zero)
        record["lam"] = self.reg.lam
        record["near_zero_share"] = share
        if self.mode == "raise" and share < (self.target_share or 0):
            self.reg.lam = min(self.reg.lam * self.growth, max(self.max_lam, self.reg.lam))

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.reg.lam, "initial": self.initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reg.lam = float(state["lam"])
        self.initial = state["initial"]
