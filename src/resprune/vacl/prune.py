"""Select channel groups by score and remove them physically from the model.

Selection is one global ranking of every group by its score (the RMS of its weights, raw or
normalised per layer: see :func:`~resprune.vacl.regularizer.group_scores`), lowest first, under
two rules:

* never empty a layer: every conv/BN/linear/shortcut keeps at least one channel (a grouped conv
  at least one per cardinal group), and with ``max_layer_reduction=F`` at least
  ``ceil((1 - F) * width)`` channels;
* ResNeXt grouped convs keep equal channel counts per cardinal group: channels of a grouped
  conv's input (or output) are removed in *bundles* of one channel per cardinal group, formed by
  rank (the k-th weakest channel of every cardinal group); a bundle scores as its strongest
  member, so it goes only when every member would.

Stop rule: ``threshold=T`` removes every unit scoring below ``T``; ``target_params_reduction``
/ ``target_macs_reduction=R`` removes units until the whole model's parameters / MACs have
fallen by at least ``R`` (an analytical count of conv/linear/BN sizes drives the search; the
report gives the counts of :mod:`resprune.measure` before and after); both together remove
units until both have fallen that far.

Removal edits the modules in place: conv/linear weights and biases, BN channels and running
statistics, and PadShortcut index maps (kept outputs point at the new positions of their
inputs). The result is a plain, smaller model; for a resprune ResNet ``spec_of`` describes it
and ``resprune.save`` / ``resprune.load`` round-trip it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..measure.latency_table import COSTS
from ..models import PadShortcut, ResNet, validate_spec
from . import latency_fit
from .config import one_rule
from .groups import (
    BN,
    IN,
    OUT,
    PAD_IN,
    PAD_OUT,
    GroupSet,
    Member,
    PadShortcutPruner,
    check_input_shape,
    discover_groups,
    modules_by_name,
)
from .latency_fit import CHECKS, Timer, fit_goal, pruned_copy
from .ranking import (
    SizeModel,
    rank_by_cost,
    removal_units,
    round_widths,
    saved_fraction,
    select,
    sizes_and_minimums,
    unit_savings,
)
from .regularizer import DATA_SCORES, group_scores

_CONV = nn.modules.conv._ConvNd
_BATCHNORM = nn.modules.batchnorm._BatchNorm


# -- options ----------------------------------------------------------------------------------
def _check_options(threshold: Any, params_r: Any, macs_r: Any, latency_r: Any = None,
                   latency_ms: Any = None) -> dict[str, float]:
    """The stop rule as goals: ``{"threshold": T}``, ``{"latency_ms": MS}`` or reductions by
    metric; a params and a MACs reduction may be given together (both must be reached)."""
    given = [(k, v) for k, v in (("threshold", threshold), ("target_params_reduction", params_r),
                                 ("target_macs_reduction", macs_r),
                                 ("target_latency_reduction", latency_r),
                                 ("target_latency", latency_ms)) if v is not None]
    if not one_rule([k for k, _ in given]):
        raise UserError("give exactly one of threshold, target_params_reduction and "
                        "target_macs_reduction (or target_latency_reduction, target_latency), "
                        "or both target_params_reduction and target_macs_reduction "
                        f"(got {', '.join(k for k, _ in given) or 'none'})")
    goals: dict[str, float] = {}
    for key, value in given:
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not math.isfinite(value)):
            raise UserError(f"{key} must be a number, got {value!r}")
        if key == "threshold":
            if value < 0:
                raise UserError(f"threshold must be >= 0, got {value!r}")
            goals["threshold"] = float(value)
        elif key == "target_latency":
            if value <= 0:
                raise UserError(f"target_latency must be > 0 ms, got {value!r}")
            goals["latency_ms"] = float(value)
        elif not 0 <= value < 1:
            raise UserError(f"{key} must be in [0, 1) (a fraction of the model to remove), "
                            f"got {value!r}")
        else:
            goals[key.split("_")[1]] = float(value)
    return goals


def _raised(goals: dict[str, float], t: float) -> dict[str, float]:
    """Every reduction goal moved the fraction ``t`` of the way to 0.999."""
    return {m: v + t * (0.999 - v) for m, v in goals.items()}


def _all_reached(model: nn.Module, groups: GroupSet, picked: list[int],
                  goals: dict[str, float], shape, params_before: int, macs_before: int,
                  table: Any = None) -> bool:
    """Whether removing ``picked`` reaches every reduction goal (analytical size model)."""
    return all(saved_fraction(model, groups, picked, m, shape, params_before, macs_before,
                              table) >= v - 1e-12 for m, v in goals.items())


def _rounded_selection(model, groups, units, chosen, goals, multiple, shape,
                       params_before, macs_before, cap: float, table
                       ) -> tuple[list[int], bool]:
    """Round the selection's widths; with targets, find by bisection the smallest raise of
    the selection goals (toward 0.999) whose rounded widths still reach them all (rounding
    may keep channels back)."""
    size, least = sizes_and_minimums(model, groups, cap)
    if "threshold" in goals:
        return round_widths(groups, units, chosen, multiple, size, least), True

    def rounded(t: float) -> tuple[list[int], bool]:
        picked = chosen if t == 0 else select(
            model, groups, units, _raised(goals, t), SizeModel(model, shape, params_before,
                                                               macs_before, table), cap)[0]
        picked = round_widths(groups, units, picked, multiple, size, least)
        return picked, _all_reached(model, groups, picked, goals, shape, params_before,
                                     macs_before, table)

    best, ok = rounded(0.0)
    if ok:
        return best, True
    lo, hi = 0.0, 1.0
    top, ok = rounded(hi)
    if not ok:
        return top, False
    best = top
    for _ in range(12):
        mid = (lo + hi) / 2
        picked, ok = rounded(mid)
        if ok:
            hi, best = mid, picked
        else:
            lo = mid
    return best, True


# -- surgery --------------------------------------------------------------------------------------
def _new_param(old: nn.Parameter, data: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(data.detach().clone().contiguous(), requires_grad=old.requires_grad)


def _keep(n: int, drop: set[int]) -> list[int]:
    return [i for i in range(n) if i not in drop]


def _prune_conv(m: nn.Module, drop_out: set[int], drop_in: set[int]) -> None:
    keep_out = _keep(m.out_channels, drop_out)
    keep_in = _keep(m.in_channels, drop_in)
    g = m.groups
    ob, ib = m.out_channels // g, m.in_channels // g
    rows = [[r for r in keep_out if r // ob == b] for b in range(g)]
    cols = [[c - b * ib for c in keep_in if c // ib == b] for b in range(g)]
    if len({len(r) for r in rows}) != 1 or len({len(c) for c in cols}) != 1:
        raise RuntimeError("internal error: unequal channel removal across cardinal groups")
    w = m.weight.data
    blocks = [w[torch.tensor(r, dtype=torch.long, device=w.device)][
        :, torch.tensor(c, dtype=torch.long, device=w.device)] for r, c in zip(rows, cols)]
    m.weight = _new_param(m.weight, torch.cat(blocks))
    if m.bias is not None:
        m.bias = _new_param(m.bias, m.bias.data[keep_out])
    m.out_channels, m.in_channels = len(keep_out), len(keep_in)


def _prune_linear(m: nn.Linear, drop_out: set[int], drop_in: set[int]) -> None:
    keep_out = _keep(m.out_features, drop_out)
    keep_in = _keep(m.in_features, drop_in)
    m.weight = _new_param(m.weight, m.weight.data[keep_out][:, keep_in])
    if m.bias is not None:
        m.bias = _new_param(m.bias, m.bias.data[keep_out])
    m.out_features, m.in_features = len(keep_out), len(keep_in)


def _prune_bn(m: nn.Module, drop: set[int]) -> None:
    keep = _keep(m.num_features, drop)
    if m.affine:
        m.weight = _new_param(m.weight, m.weight.data[keep])
        m.bias = _new_param(m.bias, m.bias.data[keep])
    if m.running_mean is not None:
        m.running_mean = m.running_mean[keep].clone()
        m.running_var = m.running_var[keep].clone()
    m.num_features = len(keep)


def remove_members(model: nn.Module, members: Sequence[Member]) -> None:
    """Physically remove the given channel slices (all slices of whole groups)."""
    drop: dict[tuple[str, str], set[int]] = defaultdict(set)
    for m in members:
        drop[(m.module, m.role)].add(m.channel)
    mods = modules_by_name(model, {n for n, _ in drop})
    pad_pruner = PadShortcutPruner()
    for name, m in mods.items():
        d_out, d_in = drop.get((name, OUT), set()), drop.get((name, IN), set())
        if isinstance(m, _CONV):
            _prune_conv(m, d_out, d_in)
        elif isinstance(m, nn.Linear):
            _prune_linear(m, d_out, d_in)
        elif isinstance(m, _BATCHNORM):
            _prune_bn(m, drop[(name, BN)])
        elif isinstance(m, PadShortcut):
            # outputs first (in the old output numbering), then inputs (renumbered)
            pad_pruner.prune_out_channels(m, sorted(drop.get((name, PAD_OUT), ())))
            pad_pruner.prune_in_channels(m, sorted(drop.get((name, PAD_IN), ())))


# -- entry point ----------------------------------------------------------------------------------
def _widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, _CONV)}


def prune(model: nn.Module, input_shape: Sequence[int], threshold: float | None = None,
          target_params_reduction: float | None = None,
          target_macs_reduction: float | None = None, *, groups: GroupSet | None = None,
          include_bn: bool = True, include_consumers: bool = False,
          score: str = "layer_rms", round_to: int | str | None = None,
          max_layer_reduction: float | None = None,
          target_latency_reduction: float | None = None, latency_table: Any = None,
          cost: str = "none", target_latency: float | None = None,
          scores: torch.Tensor | None = None, latency_check: str = "table",
          latency_timer: Timer | None = None) -> dict[str, Any]:
    """Prune ``model`` in place; return a JSON-serialisable report.

    Give exactly one of ``threshold`` (remove groups whose RMS is below it),
    ``target_params_reduction`` or ``target_macs_reduction`` (a fraction in [0, 1) of the whole
    model's parameters / MACs to remove), or both of the last two (units go until both are
    reached; the report's ``mode`` is ``"params+macs"`` and ``targets`` holds both).
    ``input_shape`` is ``[C, H, W]`` (MACs depend on it).
    ``groups`` reuses a :class:`GroupSet` discovered on this model; ``include_bn`` /
    ``include_consumers`` choose the group vector whose RMS is the score (as in the regularizer);
    ``score`` is ``"rms"``, ``"layer_rms"`` or ``"taylor"`` (see
    :func:`~resprune.vacl.group_scores`); ``scores`` gives the groups' scores ready-made (one
    per group of ``groups``, e.g. ``group_scores(..., "taylor", loader=...)``: data-dependent
    scores are computed by the caller, who holds the data).
    ``round_to=N`` keeps every layer's width a multiple of N (:func:`round_widths`; with a
    target the selection is repeated with a raised goal until the rounded widths reach it).
    ``max_layer_reduction=F`` removes at most the fraction F of any layer's channels (every
    layer keeps ``ceil((1 - F) * width)``; units that would go below are skipped), so no
    residual stream or inner width collapses to a few channels; default: no cap.
    ``cost="params"`` / ``"macs"`` ranks units by score per param / MAC their removal saves
    (the analytical size model at full width) instead of by score: with a score summed over
    the layers a group spans (``"taylor"``) it weighs what a channel costs against what it
    is worth, so wide residual-stream channels can go before thin inner ones.

    Latency (``latency_table``: a :class:`resprune.measure.latency_table.LatencyTable` of
    this model): ``target_latency_reduction=R`` removes units until the table's predicted
    latency fell by R; ``target_latency=MS`` until it is at most MS (ms per batch of the
    table; nothing goes when the model is already as fast); ``cost="latency"`` ranks units
    by score per unit of latency saved instead of by score, and keeps widths on the channel
    step the table shows unless ``round_to`` is given (``round_to=1``: exact widths);
    ``round_to="auto"`` takes that step (:func:`~resprune.measure.latency_table.auto_multiple`)
    with any cost.
    ``latency_check="measured"`` meets a latency target on the pruned model as timed against
    the input (:mod:`resprune.vacl.latency_fit`; ``latency_timer(input, pruned) -> (ms, ms)``
    replaces the default timer, e.g. to time on the deployment device) instead of on the
    table's prediction; the report's ``latency`` then holds the measured reduction and the
    rounds.

    Any optimizer or regularizer built for the model before is stale afterwards.
    """
    from ..measure import count_macs, count_params

    goals = _check_options(threshold, target_params_reduction, target_macs_reduction,
                           target_latency_reduction, target_latency)
    latency_ms = goals.get("latency_ms")
    is_latency = "latency" in goals or latency_ms is not None
    if cost not in COSTS:
        raise UserError(f"unknown ranking cost {cost!r}; choose one of: {', '.join(COSTS)}")
    needs_table = is_latency or cost == "latency" or round_to == "auto"
    if needs_table and latency_table is None:
        raise UserError("target_latency_reduction, target_latency, cost='latency' and "
                        "round_to='auto' need a latency table "
                        "(resprune.measure.latency_table.measure_table)")
    if latency_check not in CHECKS:
        raise UserError(f"unknown latency check {latency_check!r}; choose one of: "
                        f"{', '.join(CHECKS)}")
    if latency_check == "measured" and not is_latency:
        raise UserError("latency_check='measured' checks a latency target "
                        "(target_latency_reduction or target_latency)")
    if cost != "none" and "threshold" in goals:
        raise UserError(f"cost={cost!r} ranks for a params, MACs or latency target; a "
                        "threshold removes by score alone")
    if round_to is None and cost == "latency":
        # latency-aware ranking with exact widths lost to importance ranking at equal
        # latency (2 seeds); on the table's channel step it won (2 seeds): round_to=1 opts out
        round_to = "auto"
    if round_to == "auto":
        from ..measure.latency_table import auto_multiple

        round_to = auto_multiple(latency_table)
    shape = check_input_shape(input_shape)
    cap = 1.0 if max_layer_reduction is None else max_layer_reduction
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 < cap <= 1:
        raise UserError(f"max_layer_reduction must be a fraction in (0, 1], got "
                        f"{max_layer_reduction!r}")
    if groups is None:
        groups = discover_groups(model, shape)
    if scores is None:
        if score in DATA_SCORES:
            raise UserError(f"group score {score!r} reads training data: compute it with "
                            f"group_scores(..., {score!r}, loader=...) and pass scores=")
        scores = group_scores(model, groups, include_bn, include_consumers, score)
    scores = torch.as_tensor(scores, dtype=torch.float64).cpu()
    if scores.shape != (len(groups),):
        raise UserError(f"scores must hold one number per channel group ({len(groups)}), "
                        f"got shape {tuple(scores.shape)}")
    units, fixed = removal_units(model, groups, scores)
    params_before, macs_before = count_params(model), count_macs(model, shape)
    widths_before = _widths(model)
    sizes = None if "threshold" in goals else SizeModel(model, shape, params_before, macs_before,
                                                       latency_table)
    if cost != "none":
        units = rank_by_cost(units, unit_savings(sizes, groups, units, cost))
    latency_before = sizes.total("latency") if sizes is not None and latency_table else None
    if latency_ms is not None:  # an absolute target is a reduction of the predicted total
        goals = {"latency": max(0.0, 1 - latency_ms / latency_before)}
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)
                                 or round_to < 1):
        raise UserError(f"round_to must be an integer >= 1 (channels) or 'auto', got "
                        f"{round_to!r}")

    def choose(goal: dict[str, float], sizes: SizeModel | None
               ) -> tuple[list[int], dict[str, Any]]:
        picked, stats = select(model, groups, units, goal, sizes, cap)
        if round_to is not None:
            picked, stats["reached"] = _rounded_selection(
                model, groups, units, picked, goal, round_to, shape, params_before,
                macs_before, cap, latency_table)
        return picked, stats

    chosen, stats = choose(goals, sizes)
    fit = None
    if latency_check == "measured":
        timer = latency_timer or latency_fit.model_timer(latency_table, shape)
        value = goals["latency"]
        chosen, fit = fit_goal(
            lambda goal: chosen if goal == value else choose({"latency": goal}, SizeModel(
                model, shape, params_before, macs_before, latency_table))[0],
            lambda picked: timer(model, pruned_copy(
                model, [m for gi in picked for m in groups[gi].members])),
            (lambda base_ms: 1 - latency_ms / base_ms) if latency_ms is not None
            else (lambda _base_ms: value), value)
        stats["reached"] = fit["reached"]

    latency = None
    if latency_before is not None:
        share = saved_fraction(model, groups, chosen, "latency", shape, params_before,
                               macs_before, latency_table)
        latency = {"runtime": latency_table.runtime, "batch": latency_table.batch,
                   "threads": latency_table.threads, "predicted_before_ms": latency_before,
                   "predicted_after_ms": latency_before * (1 - share),
                   "predicted_reduction": share, "check": latency_check}
        if fit is not None:
            latency.update({k: fit[k] for k in ("goal", "measured_reduction", "input_ms",
                                                "pruned_ms", "rounds")})
    remove_members(model, [m for gi in chosen for m in groups[gi].members])
    if isinstance(model, ResNet):
        validate_spec(model.spec())
    params_after, macs_after = count_params(model), count_macs(model, shape)
    removed_kinds = Counter(groups[gi].kind for gi in chosen)
    kept_out: dict[str, list[int]] = {}
    dropped: dict[str, set[int]] = defaultdict(set)
    for gi in chosen:
        for m in groups[gi].members:
            if m.role == OUT:
                dropped[m.module].add(m.channel)
    for name, width in widths_before.items():
        kept_out[name] = _keep(width, dropped.get(name, set()))
    return {
        "mode": "+".join(goals),
        "threshold": goals.get("threshold"),
        "target_reduction": (None if "threshold" in goals or len(goals) > 1
                             else next(iter(goals.values()))),
        "targets": None if "threshold" in goals else dict(goals),
        "target_reached": stats["reached"],
        "include_bn": include_bn,
        "include_consumers": include_consumers,
        "score": score,
        "round_to": round_to,
        "max_layer_reduction": max_layer_reduction,
        "cost": cost,
        "latency": latency,
        "target_latency_ms": latency_ms,
        "groups_total": len(groups),
        "groups_by_kind": groups.counts(),
        "groups_fixed": len(fixed),
        "groups_removed": len(chosen),
        "removed_by_kind": {k: removed_kinds.get(k, 0) for k in groups.counts()},
        "units_skipped_to_keep_layers": stats["skipped_to_keep_layers"],
        "removed_groups": [groups[gi].name for gi in chosen],
        "widths_before": widths_before,
        "widths_after": _widths(model),
        "kept_out_channels": kept_out,
        "params_before": params_before,
        "params_after": params_after,
        "params_reduction": 1 - params_after / params_before if params_before else 0.0,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "macs_reduction": 1 - macs_after / macs_before if macs_before else 0.0,
        "latency_reduction": None if latency is None else latency["predicted_reduction"],
    }
