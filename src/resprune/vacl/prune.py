"""Select channel groups by score and remove them physically from the model.

Selection is one global ranking of every group by its score (the RMS of its weights, raw or
normalised per layer: see :func:`~resprune.vacl.regularizer.group_scores`), lowest first, under
two rules:

* never empty a layer: every conv/BN/linear/shortcut keeps at least one channel (a grouped conv
  at least one per cardinal group);
* ResNeXt grouped convs keep equal channel counts per cardinal group: channels of a grouped
  conv's input (or output) are removed in *bundles* of one channel per cardinal group, formed by
  rank (the k-th weakest channel of every cardinal group); a bundle scores as its strongest
  member, so it goes only when every member would.

Stop rule: ``threshold=T`` removes every unit scoring below ``T``; ``target_params_reduction``
/ ``target_macs_reduction=R`` removes units until the whole model's parameters / MACs have
fallen by at least ``R`` (an analytical count of conv/linear/BN sizes drives the search; the
report gives the counts of :mod:`resprune.measure` before and after).

Removal edits the modules in place: conv/linear weights and biases, BN channels and running
statistics, and PadShortcut index maps (kept outputs point at the new positions of their
inputs). The result is a plain, smaller model; for a resprune ResNet ``spec_of`` describes it
and ``resprune.save`` / ``resprune.load`` round-trip it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..models import PadShortcut, ResNet, validate_spec
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
from .regularizer import group_scores

_CONV = nn.modules.conv._ConvNd
_BATCHNORM = nn.modules.batchnorm._BatchNorm


@dataclass
class Unit:
    """Groups removed together (one group, or a ResNeXt bundle) and the unit's score."""

    score: float
    groups: list[int]


# -- options ----------------------------------------------------------------------------------
def _check_options(threshold: Any, params_r: Any, macs_r: Any) -> tuple[str, float]:
    given = [(k, v) for k, v in (("threshold", threshold), ("target_params_reduction", params_r),
                                 ("target_macs_reduction", macs_r)) if v is not None]
    if len(given) != 1:
        raise UserError("give exactly one of threshold, target_params_reduction and "
                        f"target_macs_reduction (got {', '.join(k for k, _ in given) or 'none'})")
    key, value = given[0]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise UserError(f"{key} must be a number, got {value!r}")
    if key == "threshold":
        if value < 0:
            raise UserError(f"threshold must be >= 0, got {value!r}")
        return "threshold", float(value)
    if not 0 <= value < 1:
        raise UserError(f"{key} must be in [0, 1) (a fraction of the model to remove), "
                        f"got {value!r}")
    return ("params" if key == "target_params_reduction" else "macs"), float(value)


# -- removal units (ResNeXt bundles) ------------------------------------------------------------
def _cardinal_block(mod: nn.Module, role: str, channel: int) -> int | None:
    if not isinstance(mod, _CONV) or mod.groups == 1 or role not in (OUT, IN):
        return None
    size = (mod.out_channels if role == OUT else mod.in_channels) // mod.groups
    return channel // size


def removal_units(model: nn.Module, groups: GroupSet, scores: torch.Tensor
                  ) -> tuple[list[Unit], list[int]]:
    """Units sorted by score (lowest first) and the groups that can never be removed.

    A group that touches a grouped conv belongs to the *family* of the (conv, side) pairs it
    touches; a family's groups are split by cardinal group and bundled by rank. A family whose
    cardinal groups do not line up one-to-one (possible only in unusual user models) is fixed.
    """
    mods = modules_by_name(model, {m.module for g in groups for m in g.members})
    s = scores.tolist()
    units: list[Unit] = []
    families: dict[tuple, dict[tuple, list[int]]] = defaultdict(lambda: defaultdict(list))
    for g in groups:
        touches = sorted({(m.module, m.role, b) for m in g.members
                          if (b := _cardinal_block(mods[m.module], m.role, m.channel)) is not None})
        if not touches:
            units.append(Unit(s[g.index], [g.index]))
            continue
        key = tuple((mod, role) for mod, role, _ in touches)
        families[key][tuple(b for _, _, b in touches)].append(g.index)
    fixed: list[int] = []
    for key, parts in families.items():
        first = mods[key[0][0]]
        sizes = {len(v) for v in parts.values()}
        firsts = {sig[0] for sig in parts}
        if len(key) != len(set(key)) or len(parts) != first.groups or len(sizes) != 1 or len(
                firsts) != len(parts):
            fixed.extend(i for v in parts.values() for i in v)
            continue
        ranked = [sorted(v, key=lambda i: (s[i], i)) for _, v in sorted(parts.items())]
        for r in range(len(ranked[0])):
            members = [part[r] for part in ranked]
            units.append(Unit(max(s[i] for i in members), members))
    units.sort(key=lambda u: (u.score, min(u.groups)))
    return units, sorted(fixed)


# -- analytical size model ----------------------------------------------------------------------
class SizeModel:
    """Params and MACs of the model as a function of the channels each layer keeps.

    Mirrors :mod:`resprune.measure`: params are parameter counts; MACs are conv and linear
    multiply-accumulates for one image (BN, pooling and additions cost none). Everything else
    (e.g. Network Implosion gates) is a constant offset calibrated against the measured totals.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...],
                 params_total: int, macs_total: int):
        self.mods: dict[str, nn.Module] = {}
        self.kept: dict[tuple[str, str], int] = {}
        self.positions: dict[str, int] = {}
        for name, m in model.named_modules():
            if isinstance(m, (_CONV, nn.Linear)):
                self.mods[name] = m
                out_n = m.out_channels if isinstance(m, _CONV) else m.out_features
                in_n = m.in_channels if isinstance(m, _CONV) else m.in_features
                self.kept[(name, OUT)], self.kept[(name, IN)] = out_n, in_n
            elif isinstance(m, _BATCHNORM):
                self.mods[name] = m
                self.kept[(name, BN)] = m.num_features
        self._record_positions(model, input_shape)
        self.params0 = sum(self.params(n) for n in self.mods)
        self.macs0 = sum(self.macs(n) for n in self.mods)
        self.param_offset = params_total - self.params0
        self.mac_offset = macs_total - self.macs0

    def _record_positions(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        """Output positions per image of every conv/linear layer (H*W, or tokens)."""
        names = {m: n for n, m in self.mods.items() if not isinstance(m, _BATCHNORM)}

        def hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            ch = out.shape[1] if isinstance(mod, _CONV) else out.shape[-1]
            self.positions[names[mod]] = out.numel() // (out.shape[0] * ch)

        handles = [m.register_forward_hook(hook) for m in names]
        p = next(iter(model.parameters()))
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(torch.zeros(1, *shape, dtype=p.dtype, device=p.device))
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()

    def _conv_like(self, name: str) -> tuple[int, int, int]:
        m = self.mods[name]
        out_n, in_n = self.kept[(name, OUT)], self.kept[(name, IN)]
        if isinstance(m, _CONV):
            return out_n * (in_n // m.groups) * math.prod(m.kernel_size), out_n, m.bias is not None
        return out_n * in_n, out_n, m.bias is not None

    def params(self, name: str) -> int:
        m = self.mods[name]
        if isinstance(m, _BATCHNORM):
            return 2 * self.kept[(name, BN)] if m.affine else 0
        w, out_n, bias = self._conv_like(name)
        return w + (out_n if bias else 0)

    def macs(self, name: str) -> int:
        if isinstance(self.mods[name], _BATCHNORM):
            return 0
        return self._conv_like(name)[0] * self.positions.get(name, 0)

    def delta(self, dec: Counter) -> tuple[int, int]:
        """(params, MACs) saved by removing ``dec[(module, role)]`` channels per layer side."""
        touched = {n for n, _ in dec if n in self.mods}
        before = [(self.params(n), self.macs(n)) for n in touched]
        for k, v in dec.items():
            if k in self.kept:
                self.kept[k] -= v
        after = [(self.params(n), self.macs(n)) for n in touched]
        for k, v in dec.items():
            if k in self.kept:
                self.kept[k] += v
        return (sum(b[0] for b in before) - sum(a[0] for a in after),
                sum(b[1] for b in before) - sum(a[1] for a in after))

    def apply(self, dec: Counter) -> None:
        for k, v in dec.items():
            if k in self.kept:
                self.kept[k] -= v


# -- selection ------------------------------------------------------------------------------------
def _sizes_and_minimums(model: nn.Module, groups: GroupSet
                        ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    mods = modules_by_name(model, {m.module for g in groups for m in g.members})
    size: dict[tuple[str, str], int] = {}
    least: dict[tuple[str, str], int] = {}
    for name, m in mods.items():
        if isinstance(m, _CONV):
            size[(name, OUT)], size[(name, IN)] = m.out_channels, m.in_channels
            least[(name, OUT)] = least[(name, IN)] = m.groups
        elif isinstance(m, nn.Linear):
            size[(name, OUT)], size[(name, IN)] = m.out_features, m.in_features
        elif isinstance(m, _BATCHNORM):
            size[(name, BN)] = m.num_features
        elif isinstance(m, PadShortcut):
            size[(name, PAD_OUT)], size[(name, PAD_IN)] = m.out_channels, m.in_channels
    for k in size:
        least.setdefault(k, 1)
    return size, least


def select(model: nn.Module, groups: GroupSet, units: list[Unit], mode: str, value: float,
           sizes: SizeModel | None = None) -> tuple[list[int], dict[str, Any]]:
    """Walk the units lowest score first; return the removed group indices and statistics."""
    size, least = _sizes_and_minimums(model, groups)
    dec_of = [Counter((m.module, m.role) for m in g.members) for g in groups]
    chosen: list[int] = []
    stats = {"skipped_to_keep_layers": 0, "reached": mode == "threshold"}
    total = None
    saved = 0
    if mode != "threshold":
        assert sizes is not None
        total = (sizes.params0 + sizes.param_offset) if mode == "params" else (
            sizes.macs0 + sizes.mac_offset)
    for unit in units:
        if mode == "threshold" and unit.score >= value:
            break
        if total is not None and saved >= value * total:
            stats["reached"] = True
            break
        dec: Counter = Counter()
        for gi in unit.groups:
            dec.update(dec_of[gi])
        if any(size[k] - v < least[k] for k, v in dec.items()):
            stats["skipped_to_keep_layers"] += 1
            continue
        for k, v in dec.items():
            size[k] -= v
        if sizes is not None:
            dp, dm = sizes.delta(dec)
            sizes.apply(dec)
            saved += dp if mode == "params" else dm
        chosen.extend(unit.groups)
    else:
        if total is not None and saved >= value * total:
            stats["reached"] = True
    return sorted(chosen), stats


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
          score: str = "layer_rms") -> dict[str, Any]:
    """Prune ``model`` in place; return a JSON-serialisable report.

    Give exactly one of ``threshold`` (remove groups whose RMS is below it),
    ``target_params_reduction`` or ``target_macs_reduction`` (a fraction in [0, 1) of the whole
    model's parameters / MACs to remove). ``input_shape`` is ``[C, H, W]`` (MACs depend on it).
    ``groups`` reuses a :class:`GroupSet` discovered on this model; ``include_bn`` /
    ``include_consumers`` choose the group vector whose RMS is the score (as in the regularizer);
    ``score`` is ``"rms"`` or ``"layer_rms"`` (see :func:`~resprune.vacl.group_scores`).

    Any optimizer or regularizer built for the model before is stale afterwards.
    """
    from ..measure import count_macs, count_params

    mode, value = _check_options(threshold, target_params_reduction, target_macs_reduction)
    shape = check_input_shape(input_shape)
    if groups is None:
        groups = discover_groups(model, shape)
    scores = group_scores(model, groups, include_bn, include_consumers, score)
    units, fixed = removal_units(model, groups, scores)
    params_before, macs_before = count_params(model), count_macs(model, shape)
    widths_before = _widths(model)
    sizes = None if mode == "threshold" else SizeModel(model, shape, params_before, macs_before)
    chosen, stats = select(model, groups, units, mode, value, sizes)

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
        "mode": mode,
        "threshold": value if mode == "threshold" else None,
        "target_reduction": None if mode == "threshold" else value,
        "target_reached": stats["reached"],
        "include_bn": include_bn,
        "include_consumers": include_consumers,
        "score": score,
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
    }
