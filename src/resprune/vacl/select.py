"""Choose how much to prune from validation accuracy (``resprune vacl --auto-tolerance``).

After sparsity training, :func:`choose_reduction` prunes *copies* of the model down to
increasing candidate reductions of params (or MACs), evaluates each copy on the validation
loader it is given (no fine-tuning), and returns the largest candidate that keeps validation
top-1 within ``tolerance`` percentage points of the unpruned model's.

The scan goes up from the smallest candidate and stops at the first one that fails (or that
removes nothing more than the one before: the prunable groups are exhausted). So the choice is
the largest reduction up to which *every* candidate held, not a lucky point beyond a dip in a
noisy curve; and a larger tolerance never chooses less. The model passed in is never changed.
Only the loader passed in is read: give it the validation split, never the test set.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from ..errors import UserError
from ..measure import evaluate
from .groups import GroupSet, check_input_shape, discover_groups
from .prune import prune

# 5 %, 10 %, ..., 95 % of the model's params (or MACs)
DEFAULT_CANDIDATES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
METRICS = ("params", "macs")


def _check(tolerance: Any, candidates: Sequence[float], metric: str) -> list[float]:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
            math.isfinite(tolerance) and tolerance >= 0):
        raise UserError(f"auto tolerance must be a number >= 0 (percentage points of "
                        f"validation top-1), got {tolerance!r}")
    if metric not in METRICS:
        raise UserError(f"unknown reduction metric {metric!r}; choose params or macs")
    cands = sorted({float(c) for c in candidates})
    if not cands or any(not 0 < c < 1 for c in cands):
        raise UserError("auto candidates must be fractions in (0, 1), at least one, got "
                        f"{list(candidates)!r}")
    return cands


def choose_reduction(model: nn.Module, input_shape: Sequence[int], val_loader: Iterable[Any],
                     tolerance: float, *,
                     candidates: Sequence[float] = DEFAULT_CANDIDATES, metric: str = "params",
                     groups: GroupSet | None = None, include_bn: bool = True,
                     include_consumers: bool = False, score: str = "layer_rms",
                     reference: float | None = None, precision: str = "fp32",
                     round_to: int | None = None, max_layer_reduction: float | None = None,
                     scores: Any = None) -> dict[str, Any]:
    """The largest candidate reduction whose pruned copy keeps validation accuracy.

    ``tolerance`` is in percentage points: a candidate holds when its val top-1 >=
    ``reference`` - tolerance / 100 (top-1 as fractions). ``reference`` defaults to the val
    top-1 of ``model`` itself; ``resprune vacl`` passes the val top-1 of the net *before*
    sparsity training, so that a regularizer strong enough to wreck the sparse model cannot
    make heavy pruning look harmless. ``groups`` /
    ``include_bn`` / ``include_consumers`` are those of the regularizer (they define the RMS
    scores :func:`~resprune.vacl.prune` ranks by); ``score``, ``scores``, ``round_to`` and
    ``max_layer_reduction`` are prune's. Returns a
    JSON-ready dict:

    - ``chosen``: the reduction to pass as ``target_{metric}_reduction`` (0.0 when even the
      smallest candidate fails: prune nothing);
    - ``reference_val_top1`` and ``bar`` (the lowest val top-1 that holds);
    - ``candidates``: one record per candidate tried, in order: ``target``, ``reduction``
      (achieved), ``val_top1``, ``holds``;
    - ``stop``: ``accuracy`` (a candidate failed), ``exhausted`` (nothing more could be
      removed) or ``all_held``.
    """
    cands = _check(tolerance, candidates, metric)
    shape = check_input_shape(input_shape)
    if groups is None:
        groups = discover_groups(model, shape)
    if reference is None:
        reference = evaluate(model, val_loader, precision=precision)["top1"]
    reference = float(reference)
    bar = reference - float(tolerance) / 100
    tried: list[dict[str, Any]] = []
    chosen, achieved, stop = 0.0, 0.0, "all_held"
    for target in cands:
        pruned = copy.deepcopy(model)
        report = prune(pruned, shape, groups=groups, include_bn=include_bn,
                       include_consumers=include_consumers, score=score, round_to=round_to,
                       max_layer_reduction=max_layer_reduction, scores=scores,
                       **{f"target_{metric}_reduction": target})
        reduction = float(report[f"{metric}_reduction"])
        last = tried[-1] if tried else None
        if last is not None and reduction == last["reduction"]:
            if not report["target_reached"]:  # nothing more can be removed
                stop = "exhausted"
                break
            acc = last["val_top1"]  # the same pruned net as the candidate before
        else:
            acc = evaluate(pruned, val_loader, precision=precision)["top1"]
        del pruned
        holds = acc >= bar - 1e-12  # as implosion's acceptance test
        tried.append({"target": target, "reduction": reduction, "val_top1": acc,
                      "holds": holds})
        if not holds:
            stop = "accuracy"
            break
        chosen, achieved = target, reduction
    return {"metric": metric, "tolerance": float(tolerance), "reference_val_top1": reference,
            "bar": bar, "candidates": tried, "chosen": chosen, "chosen_reduction": achieved,
            "stop": stop}
