"""Vectorised view of channel groups: per-member squared norms in a handful of tensor ops.

A group ``g`` has *members* ``l``, one per layer taking part in it: each producer layer's
output filter (with, when ``include_bn``, the gamma/beta entries of the BN that follows that
layer directly) and, when ``include_consumers``, each consumer layer's input slice. The layout
turns the groups into index tensors once. At call time the parameters read along their output
channels that share a shape after the first dimension (every 3x3 conv of a stage, every BN
vector) are concatenated as they are and reduced together (one cat + square + row sum per
shape: a few ops for a whole ResNet, which matters on a busy CPU where each small op costs a
thread wake-up, and on a GPU where each costs a launch); consumer input slices are reduced per
tensor, and all results are scattered into members with a single ``index_add``. There is no
Python loop over channels or groups at call time, and no op per parameter tensor on the
output side: the same concatenations give :meth:`Layout.bucket_cats`, from which
:meth:`resprune.vacl.Regularizer.add_grad_` forms the regularizer's gradient.
"""

from __future__ import annotations

import math
import weakref
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from .groups import BN, CROSS, IN, OUT, GroupSet, modules_by_name


@dataclass
class Entry:
    """One parameter tensor read along its output (``out``) or input (``in``) channels."""

    module: str
    param: str
    mode: str
    groups: int
    size: int                      # channel count the layout was built for
    channels: torch.Tensor | None  # channels used, in slot order; None = all, in order


def channel_sq(p: torch.Tensor, mode: str, groups: int) -> torch.Tensor:
    """Per-channel sum of squares of a parameter along its output or input channels."""
    return channel_sum(p.square(), mode, groups)


def channel_sum(t: torch.Tensor, mode: str, groups: int) -> torch.Tensor:
    """Per-channel sum of a parameter-shaped tensor along its output or input channels.

    For a grouped conv (weight ``[O, I/G, kh, kw]``) input channel ``g*I/G + j`` is column
    ``j`` of the rows of cardinal group ``g``.
    """
    if mode == OUT:
        return t.reshape(t.shape[0], -1).sum(1)
    if t.dim() == 2:  # linear: [out, in]
        return t.sum(0)
    per = t.reshape(t.shape[0], t.shape[1], -1).sum(2)  # [O, I/G]
    if groups == 1:
        return per.sum(0)
    o, ig = per.shape
    return per.reshape(groups, o // groups, ig).sum(1).reshape(-1)


def _scalars_per_channel(p: torch.Tensor, mode: str, groups: int) -> int:
    if mode == OUT:
        return p.numel() // p.shape[0]
    if p.dim() == 2:
        return p.shape[0]
    return (p.shape[0] // groups) * math.prod(p.shape[2:])


class Layout:
    """Index tensors mapping parameter slices to members and members to groups.

    ``member_group[l]`` is the group of member ``l``; ``size[g]`` (``p_g``) is the number of
    scalars in group ``g``; ``count[g]`` (``m_g``) its number of members; ``cross[g]`` whether
    it is a cross-layer group. ``member_layer[l]`` numbers the layer member ``l`` is a slice of
    (its producer, with its BN, or a consumer's input side) and ``member_size[l]`` counts its
    scalars.
    """

    def __init__(self, model: nn.Module, groups: GroupSet, include_bn: bool = True,
                 include_consumers: bool = False):
        self.include_bn = include_bn
        self.include_consumers = include_consumers
        names = {m.module for g in groups for m in g.members}
        mods = modules_by_name(model, names)
        slots: dict[tuple[str, str, str], list[tuple[int, int]]] = defaultdict(list)
        member_group: list[int] = []
        member_key: list[str] = []
        for gi, g in enumerate(groups):
            # member key -> member id; a BN joins the member of the layer that feeds it
            member_of: dict[str, int] = {}
            for m in sorted(g.members, key=lambda m: m.role != OUT):  # producers first
                key = None
                if m.role == OUT:
                    key, pnames = m.module, ("weight", "bias")
                elif m.role == BN and include_bn and getattr(mods[m.module], "affine", False):
                    parent = groups.bn_parent.get(m.module)
                    key = parent if parent in member_of else m.module
                    pnames = ("weight", "bias")
                elif m.role == IN and include_consumers:
                    key, pnames = m.module + ":in", ("weight",)
                if key is None:
                    continue
                if key not in member_of:
                    member_of[key] = len(member_group)
                    member_group.append(gi)
                    member_key.append(key)
                mode = IN if m.role == IN else OUT
                for pname in pnames:
                    if getattr(mods[m.module], pname, None) is not None:
                        slots[(m.module, pname, mode)].append((m.channel, member_of[key]))

        # Output-channel reads are batched: parameters read along their output channels with
        # the same shape after dim 0 (so the same row length K) are concatenated as they are
        # and reduced together (one cat + square + sum per shape, no op per tensor). Rows in
        # no group go to a dummy member.
        self.entries: list[Entry] = []
        size = [0.0] * len(groups)
        num_members = len(member_group)
        msize = [0.0] * num_members
        buckets: dict[tuple[int, tuple[int, ...], torch.dtype], list[int]] = defaultdict(list)
        rows: dict[int, list[int]] = {}
        in_slots: list[int] = []
        for (mname, pname, mode), pairs in slots.items():
            mod = mods[mname]
            p = getattr(mod, pname)
            ngroups = getattr(mod, "groups", 1) if mode == IN else 1
            n = p.shape[0] if mode == OUT else (p.shape[1] * ngroups if p.dim() > 2
                                                else p.shape[1])
            pairs.sort()
            chans = [c for c, _ in pairs]
            if chans[-1] >= n:
                raise UserError(f"channel groups do not fit layer {mname} ({n} channels): they "
                                "were found on a different model; discover them again")
            full = chans == list(range(n))
            k = len(self.entries)
            self.entries.append(Entry(mname, pname, mode, ngroups, n,
                                      None if full else torch.tensor(chans, dtype=torch.long)))
            per = _scalars_per_channel(p, mode, ngroups)
            for _, mid in pairs:
                size[member_group[mid]] += per
                msize[mid] += per
            if mode == OUT:
                buckets[(per, tuple(p.shape[1:]), p.dtype)].append(k)
                row = [num_members] * n
                for c, mid in pairs:
                    row[c] = mid
                rows[k] = row
            else:
                in_slots.extend(mid for _, mid in pairs)
        self.buckets = [ks for _, ks in sorted(buckets.items(), key=lambda kv: kv[0][:2])]
        self.in_entries = [k for k, e in enumerate(self.entries) if e.mode == IN]
        slot_member = [mid for ks in self.buckets for k in ks for mid in rows[k]] + in_slots
        self.num_groups = len(groups)
        self.num_members = len(member_group)
        self.slot_member = torch.tensor(slot_member, dtype=torch.long)
        self.member_group = torch.tensor(member_group, dtype=torch.long)
        self.size = torch.tensor(size, dtype=torch.float64)
        self.count = torch.bincount(self.member_group, minlength=self.num_groups).double()
        # members of the same layer (producer module, or a consumer's input side) share a key
        keys = {k: i for i, k in enumerate(dict.fromkeys(member_key))}
        self.member_layer = torch.tensor([keys[k] for k in member_key], dtype=torch.long)
        self.num_layers = len(keys)
        self.member_size = torch.tensor(msize, dtype=torch.float64)
        self.cross = torch.tensor([g.kind == CROSS for g in groups], dtype=torch.bool)
        self._model_ref: weakref.ReferenceType | None = None
        self._mods: list[nn.Module] = []
        self._dev_cache: dict[tuple, dict[str, torch.Tensor]] = {}

    # -- call-time helpers ---------------------------------------------------------------
    def _modules(self, model: nn.Module) -> list[nn.Module]:
        if self._model_ref is None or self._model_ref() is not model:
            table = modules_by_name(model, {e.module for e in self.entries})
            self._mods = [table[e.module] for e in self.entries]
            self._model_ref = weakref.ref(model)
        return self._mods

    def tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Index and constant tensors on ``device`` (cached)."""
        key = (device, dtype)
        if key not in self._dev_cache:
            self._dev_cache[key] = {
                "slot_member": self.slot_member.to(device),
                "member_group": self.member_group.to(device),
                "size": self.size.to(device=device, dtype=dtype),
                "count": self.count.to(device=device, dtype=dtype),
                "cross": self.cross.to(device),
                "channels": [None if e.channels is None else e.channels.to(device)
                             for e in self.entries],
            }
        return self._dev_cache[key]

    def member_sq(self, model: nn.Module) -> torch.Tensor:
        """``||w_gl||^2`` of every member, differentiable w.r.t. the model's parameters."""
        return self._reduce(model, None)

    def member_sum(self, model: nn.Module, fn) -> torch.Tensor:
        """The sum over every member's scalars of ``fn(p)``, a tensor of ``p``'s shape made
        from each parameter ``p`` the members read (``lambda p: p * p.grad``: first-order
        Taylor terms)."""
        return self._reduce(model, fn)

    def params(self, model: nn.Module) -> list[torch.Tensor]:
        """The parameter tensor of every entry, read from ``model`` now (checked against the
        channel counts the layout was built for)."""
        params = []
        for e, mod in zip(self.entries, self._modules(model)):
            p = getattr(mod, e.param, None)
            n = None if p is None else (p.shape[0] if e.mode == OUT else (
                p.shape[1] * e.groups if p.dim() > 2 else p.shape[1]))
            if n != e.size:
                raise UserError(f"layer {e.module} has changed shape since its channel groups "
                                "were found (was it pruned?); build a new Regularizer for the "
                                "pruned model")
            params.append(p)
        return params

    def bucket_cats(self, params: list[torch.Tensor], fn=None) -> list[torch.Tensor]:
        """One tensor per output-side bucket: its entries' parameters (or ``fn(p)``)
        concatenated along dim 0, in slot order (one op per bucket)."""
        cats = []
        for ks in self.buckets:
            ts = [params[k] if fn is None else fn(params[k]) for k in ks]
            cats.append(ts[0] if len(ts) == 1 else torch.cat(ts))
        return cats

    def _reduce(self, model: nn.Module, fn) -> torch.Tensor:
        params = self.params(model)
        if not params:
            return torch.zeros(0)
        return self.member_sums(params, self.bucket_cats(params, fn), fn)

    def member_sums(self, params: list[torch.Tensor], cats: list[torch.Tensor],
                    fn=None) -> torch.Tensor:
        """Per-member sums from :meth:`bucket_cats`' ``cats`` of ``params``: of squares
        (``fn`` None: squares taken after the concatenation, one op per bucket) or of
        ``fn(p)`` (the cats of ``fn(p)``), consumer input slices read per tensor."""
        dtype = params[0].dtype
        t = self.tensors(params[0].device, dtype)
        parts = [(c.square() if fn is None else c).reshape(c.shape[0], -1).sum(1) for c in cats]
        for k in self.in_entries:
            e, chans = self.entries[k], t["channels"][k]
            s = (channel_sq(params[k], e.mode, e.groups) if fn is None
                 else channel_sum(fn(params[k]), e.mode, e.groups))
            parts.append(s if chans is None else s.index_select(0, chans))
        flat = torch.cat([x if x.dtype == dtype else x.to(dtype) for x in parts])
        out = flat.new_zeros(self.num_members + 1)  # the last one collects unused rows
        return out.index_add(0, t["slot_member"], flat)[: self.num_members]
