"""Which channel groups go: units, the analytical size model, selection and width rounding.

See :mod:`resprune.vacl.prune` for the rules; :func:`resprune.vacl.prune.prune` calls
:func:`removal_units`, :func:`select` and, with ``round_to``, :func:`round_widths`.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models import PadShortcut
from .groups import BN, IN, OUT, PAD_IN, PAD_OUT, GroupSet, modules_by_name

_CONV = nn.modules.conv._ConvNd
_BATCHNORM = nn.modules.batchnorm._BatchNorm


@dataclass
class Unit:
    """Groups removed together (one group, or a ResNeXt bundle) and the unit's score."""

    score: float
    groups: list[int]


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
                 params_total: int, macs_total: int, table: Any = None):
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
        # latency (ms per batch of the table): convs from the table, the rest a constant
        self.table = table
        self.shapes: dict[str, Any] = {}
        self.latency0 = self.latency_offset = 0.0
        if table is not None:
            from ..measure.latency_table import conv_shapes

            self.shapes = conv_shapes(model, input_shape)
            self.latency0 = sum(self.latency(n) for n in self.shapes)
            self.latency_offset = max(0.0, table.model_ms - self.latency0)

    def total(self, mode: str) -> float:
        """The whole model's params, MACs or latency (ms) at full width."""
        if mode == "params":
            return self.params0 + self.param_offset
        if mode == "macs":
            return self.macs0 + self.mac_offset
        return self.latency0 + self.latency_offset

    def latency(self, name: str) -> float:
        """Predicted time of conv ``name`` at its kept widths (0 for other layers)."""
        if name not in self.shapes:
            return 0.0
        return self.table.conv_ms(self.shapes[name], self.kept[(name, IN)],
                                  self.kept[(name, OUT)])

    def channel_latency(self, name: str, role: str) -> float:
        """Average time one channel of ``name``'s ``role`` side (OUT or IN) costs at full
        width: the slope of the table's curve from 1 channel to all (ms per channel)."""
        if name not in self.shapes or role not in (OUT, IN):
            return 0.0
        s = self.shapes[name]
        n = s.out_channels if role == OUT else s.in_channels
        if n <= 1:
            return 0.0
        one = (self.table.conv_ms(s, s.in_channels, 1) if role == OUT
               else self.table.conv_ms(s, 1, s.out_channels))
        return max(0.0, self.table.conv_ms(s, s.in_channels, s.out_channels) - one) / (n - 1)

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

    def _sizes(self, names) -> tuple[int, int, float]:
        return (sum(self.params(n) for n in names), sum(self.macs(n) for n in names),
                sum(self.latency(n) for n in names))

    def delta(self, dec: Counter) -> tuple[int, int, float]:
        """(params, MACs, latency) saved by removing ``dec[(module, role)]`` channels per
        layer side (latency 0 without a table)."""
        touched = {n for n, _ in dec if n in self.mods}
        before = self._sizes(touched)
        for k, v in dec.items():
            if k in self.kept:
                self.kept[k] -= v
        after = self._sizes(touched)
        for k, v in dec.items():
            if k in self.kept:
                self.kept[k] += v
        return before[0] - after[0], before[1] - after[1], before[2] - after[2]

    def apply(self, dec: Counter) -> None:
        for k, v in dec.items():
            if k in self.kept:
                self.kept[k] -= v


# -- selection ------------------------------------------------------------------------------------
def sizes_and_minimums(model: nn.Module, groups: GroupSet, max_layer_reduction: float = 1.0
                        ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Every (layer, side)'s width and the fewest channels it may keep: one (a grouped conv:
    one per cardinal group), and with ``max_layer_reduction`` < 1 at least
    ``ceil((1 - max_layer_reduction) * width)``."""
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
    for k, n in size.items():
        floor = math.ceil((1 - max_layer_reduction) * n - 1e-9)
        least[k] = max(least.get(k, 1), floor)
    return size, least


def select(model: nn.Module, groups: GroupSet, units: list[Unit], goals: dict[str, float],
           sizes: SizeModel | None = None, max_layer_reduction: float = 1.0
           ) -> tuple[list[int], dict[str, Any]]:
    """Walk the units lowest score first; return the removed group indices and statistics.

    ``goals``: ``{"threshold": T}`` removes every unit scoring below T; otherwise one or more
    reductions by metric (``{"params": R}``, ``{"params": P, "macs": M}``, ``{"latency": R}``,
    as fractions of ``sizes``' totals): the walk stops once *every* goal is reached (the walk's
    order does not depend on the goals, so two goals stop where the later of the two would).
    A unit that would take any layer below its minimum (:func:`sizes_and_minimums`) is
    skipped."""
    size, least = sizes_and_minimums(model, groups, max_layer_reduction)
    dec_of = [Counter((m.module, m.role) for m in g.members) for g in groups]
    chosen: list[int] = []
    threshold = goals.get("threshold")
    stats = {"skipped_to_keep_layers": 0, "reached": threshold is not None}
    need: dict[str, float] = {}
    saved: dict[str, float] = {}
    if threshold is None:
        assert sizes is not None
        need = {m: v * sizes.total(m) for m, v in goals.items()}
        saved = dict.fromkeys(need, 0.0)

    def done() -> bool:
        return bool(need) and all(saved[m] >= need[m] for m in need)

    for unit in units:
        if threshold is not None and unit.score >= threshold:
            break
        if done():
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
            delta = dict(zip(("params", "macs", "latency"), sizes.delta(dec)))
            sizes.apply(dec)
            for m in saved:
                saved[m] += delta[m]
        chosen.extend(unit.groups)
    if done():
        stats["reached"] = True
    return sorted(chosen), stats


def round_widths(groups: GroupSet, units: list[Unit], chosen: list[int], multiple: int,
                 size: dict[tuple[str, str], int], least: dict[tuple[str, str], int]
                 ) -> list[int]:
    """``chosen`` adjusted so that every producer layer keeps a multiple of ``multiple``
    channels (or its full width).

    Each misaligned layer's kept width goes to the nearest multiple (at least ``multiple``):
    the highest-scoring removed units touching it come back, or its lowest-scoring kept units
    go, preferring units that touch the fewest layers (a cross-layer group spans every
    producer of a residual stream; with zero-padding shortcuts some streams share channels),
    so fixing one layer seldom unaligns another; a few passes settle the rest. Runtimes such
    as onnxruntime compute convolutions in blocks of 8 or 16 channels, so an odd width costs
    the time of the next multiple without its accuracy.
    """
    chosen_set = set(chosen)
    touch = [Counter(m.module for gi in u.groups for m in groups[gi].members if m.role == OUT)
             for u in units]
    layers = sorted({name for c in touch for name in c if (name, OUT) in size})
    kept = {name: size[(name, OUT)] for name in layers}
    for u, c in zip(units, touch):
        if u.groups[0] in chosen_set:
            for name, n in c.items():
                if name in kept:
                    kept[name] -= n
    by_layer: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(touch):
        for name in c:
            by_layer[name].append(i)

    def flip(i: int, remove: bool) -> bool:
        c, sign = touch[i], (-1 if remove else 1)
        if remove and any(kept[n] - k < least.get((n, OUT), 1) for n, k in c.items()
                          if n in kept):
            return False
        for n, k in c.items():
            if n in kept:
                kept[n] += sign * k
        (chosen_set.update if remove else chosen_set.difference_update)(units[i].groups)
        return True

    for _ in range(4):
        changed = False
        for name in layers:
            k, width = kept[name], size[(name, OUT)]
            if k % multiple == 0 or k == width:
                continue
            lower = (k // multiple) * multiple
            upper = min(lower + multiple, width)
            low_ok = lower >= max(multiple, least.get((name, OUT), 1))
            goal = upper if (not low_ok or k - lower >= upper - k) else lower
            cands = by_layer[name]
            if goal > k:  # bring back removed units, most local and strongest first
                order = sorted((i for i in cands if units[i].groups[0] in chosen_set),
                               key=lambda i: (len(touch[i]), -units[i].score))
                for i in order:
                    if kept[name] >= goal:
                        break
                    if kept[name] + touch[i][name] <= goal:
                        changed |= flip(i, remove=False)
            else:  # remove kept units, most local and weakest first
                order = sorted((i for i in cands if units[i].groups[0] not in chosen_set),
                               key=lambda i: (len(touch[i]), units[i].score))
                for i in order:
                    if kept[name] <= goal:
                        break
                    if kept[name] - touch[i][name] >= goal:
                        changed |= flip(i, remove=True)
        if not changed:
            break
    return sorted(chosen_set)


def saved_fraction(model: nn.Module, groups: GroupSet, chosen: list[int], mode: str,
                   shape: tuple[int, ...], params_before: int, macs_before: int,
                   table: Any = None) -> float:
    """Fraction of params / MACs / latency that removing ``chosen`` saves (analytical size
    model; latency predicted from ``table``)."""
    sizes = SizeModel(model, shape, params_before, macs_before, table)
    dec: Counter = Counter()
    for gi in chosen:
        dec.update(Counter((m.module, m.role) for m in groups[gi].members))
    saved = dict(zip(("params", "macs", "latency"), sizes.delta(dec)))[mode]
    total = sizes.total(mode)
    return saved / total if total else 0.0


def unit_savings(sizes: SizeModel, groups: GroupSet, units: list[Unit], cost: str
                 ) -> list[float]:
    """What removing each unit alone saves, for ranking by score per unit saved.

    ``cost="latency"``: the summed :meth:`SizeModel.channel_latency` of every conv side its
    groups touch (ms per batch); ``"params"`` / ``"macs"``: the params / MACs (per image) the
    analytical size model saves removing the unit from the full-width model.
    """
    if cost == "latency":
        return [sum(sizes.channel_latency(m.module, m.role) for gi in u.groups
                    for m in groups[gi].members) for u in units]
    pick = ("params", "macs").index(cost)
    return [float(sizes.delta(Counter((m.module, m.role) for gi in u.groups
                                      for m in groups[gi].members))[pick]) for u in units]


def rank_by_cost(units: list[Unit], costs: list[float]) -> list[Unit]:
    """Units ordered by score per unit of cost saved (lowest first; a unit that saves nothing
    goes last), as HALP ranks channels by importance per latency."""
    floor = max(min((c for c in costs if c > 0), default=1.0) * 1e-3, 1e-12)
    order = sorted(range(len(units)), key=lambda i: (units[i].score / max(costs[i], floor),
                                                     min(units[i].groups)))
    return [units[i] for i in order]
