"""Channel-group discovery from the traced model (torch-pruning's DependencyGraph).

A *group* is a set of channel slices that can only be removed together: removing one of them
without the others changes the network's shape or its function. Two kinds exist:

* ``cross``: channel ``i`` of a residual stream. Every producer writing into the stream (each
  block's last conv + BN, a projection shortcut conv + BN, the stem when the first stage has
  identity shortcuts) contributes its ``i``-th output filter; every consumer reading the stream
  (next blocks' first convs, the classifier) contributes its ``i``-th input slice. A group is
  ``cross`` when its channel passes through a residual addition.
* ``filter``: every other output filter of a conv/linear layer, i.e. the filters inside a
  residual block (conv1 of a basic block, conv1/conv2 of a bottleneck) and a stem that feeds
  projection shortcuts only (ImageNet ResNets), with their BN channel and the next layer's input
  slice.

Tracing is torch-pruning's autograd-based :class:`~torch_pruning.DependencyGraph`, extended the
way the library intends: resprune's zero-padding ("option A") :class:`PadShortcut` gets its own
pruner (:class:`PadShortcutPruner`) plus two dependencies that map channel indices through the
shortcut's index map. Torch-pruning alone would treat the padding op as channel-preserving and
couple stage-``s`` channel ``j`` with stage-``s+1`` channel ``j`` instead of ``index.index(j)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers as tp_helpers
from torch_pruning import ops as tp_ops
from torch_pruning.dependency.dependency import Dependency

from ..errors import UserError
from ..models import PadShortcut

# Member roles: which slice of which module a group holds.
OUT = "out"          # output filter of a conv / linear layer (weight row, bias entry)
IN = "in"            # input slice of a conv / linear layer (weight column)
BN = "bn"            # channel of a batch-norm layer (gamma, beta, running stats)
PAD_OUT = "pad_out"  # output channel of a PadShortcut
PAD_IN = "pad_in"    # input channel of a PadShortcut

CROSS = "cross"
FILTER = "filter"


@dataclass(frozen=True)
class Member:
    """One channel slice of one module: ``module`` is the qualified module name."""

    module: str
    role: str
    channel: int


@dataclass
class ChannelGroup:
    """Channel slices that stand or fall together (see the module docstring)."""

    index: int
    kind: str
    members: tuple[Member, ...]

    @property
    def name(self) -> str:
        """A readable id: the first producer filter, e.g. ``layer1.0.conv2[3]``."""
        first = next((m for m in self.members if m.role == OUT), self.members[0])
        return f"{first.module}[{first.channel}]"

    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == OUT]


@dataclass
class GroupSet:
    """All prunable channel groups of a model, in a stable order (model order of producers).

    ``bn_parent`` maps a BN layer to the conv/linear layer feeding it directly (its slice joins
    that producer's slice in the regularizer); ``skipped`` lists groups left out with the reason
    (groups touching the model output, or layer types resprune cannot prune).
    """

    groups: list[ChannelGroup]
    bn_parent: dict[str, str]
    input_shape: tuple[int, ...]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self):
        return iter(self.groups)

    def __getitem__(self, i: int) -> ChannelGroup:
        return self.groups[i]

    def of_kind(self, kind: str) -> list[ChannelGroup]:
        return [g for g in self.groups if g.kind == kind]

    def counts(self) -> dict[str, int]:
        return {CROSS: len(self.of_kind(CROSS)), FILTER: len(self.of_kind(FILTER))}


class PadShortcutPruner(tp.pruner.BasePruningFunc):
    """Torch-pruning pruner for :class:`PadShortcut`: edits the index map, never the data.

    Out-channel ``k`` of the shortcut is input channel ``index[k]`` (or a zero channel), so
    pruning inputs and pruning outputs are different operations; the coupling between them is
    added to the dependency graph by :func:`_couple_pad_channels` with an index mapping.
    """

    TARGET_MODULES = PadShortcut

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        drop = set(int(i) for i in idxs)
        index = [c for k, c in enumerate(layer.index) if k not in drop]
        _set_pad_index(layer, layer.in_channels, index)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        drop = set(int(i) for i in idxs)
        kept = [c for c in range(layer.in_channels) if c not in drop]
        new_pos = {c: i for i, c in enumerate(kept)}
        index = [new_pos.get(c, -1) if c >= 0 else -1 for c in layer.index]
        _set_pad_index(layer, len(kept), index)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels


def _set_pad_index(layer: PadShortcut, in_channels: int, index: list[int]) -> None:
    """Rewrite a PadShortcut's channel map in place (its gather buffer is non-persistent)."""
    device = layer.gather_index.device
    layer.in_channels = in_channels
    layer.gather_index = torch.tensor([i if i >= 0 else in_channels for i in index],
                                      dtype=torch.long, device=device)


class _PadIndexMapping:
    """Maps hybrid channel indices through a PadShortcut's index map (either direction)."""

    def __init__(self, pad: PadShortcut, in_to_out: bool):
        self.pad = pad
        self.in_to_out = in_to_out

    def __call__(self, idxs: list) -> list:
        index = self.pad.index
        if self.in_to_out:
            where: dict[int, list[int]] = {}
            for k, c in enumerate(index):
                if c >= 0:
                    where.setdefault(c, []).append(k)
            return [tp_helpers._HybridIndex(idx=k, root_idx=i.root_idx)
                    for i in idxs for k in where.get(i.idx, ())]
        return [tp_helpers._HybridIndex(idx=index[i.idx], root_idx=i.root_idx)
                for i in idxs if 0 <= i.idx < len(index) and index[i.idx] >= 0]


def _couple_pad_channels(dg: tp.DependencyGraph, pruner: PadShortcutPruner) -> None:
    """Add the intra-layer dependencies of every PadShortcut: in-channel c <-> out-channels k
    with ``index[k] == c``. They are ordinary torch-pruning Dependencies with an index mapping,
    so group propagation, root indices and merging work unchanged."""
    for module, node in dg.module2node.items():
        if not isinstance(module, PadShortcut):
            continue
        fwd = Dependency(pruner.prune_in_channels, pruner.prune_out_channels, node, node)
        fwd.index_mapping = [_PadIndexMapping(module, in_to_out=True), None]
        bwd = Dependency(pruner.prune_out_channels, pruner.prune_in_channels, node, node)
        bwd.index_mapping = [_PadIndexMapping(module, in_to_out=False), None]
        node.dependencies.extend([fwd, bwd])


def check_input_shape(input_shape: Any) -> tuple[int, ...]:
    """Validate an input shape ``[C, H, W]`` (no batch dimension)."""
    try:
        shape = tuple(int(s) for s in input_shape)
        ok = len(shape) >= 1 and all(s >= 1 for s in shape) and all(
            float(s) == int(s) for s in input_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"input_shape must list positive integers like [3, 32, 32] (no batch "
                        f"dimension), got {input_shape!r}")
    return shape


def default_input_shape(model: nn.Module) -> tuple[int, ...]:
    """``[in_channels, 32, 32]`` for a resprune ResNet; channel groups do not depend on the
    spatial size. Other models must be given their input shape."""
    from ..models import ResNet

    if isinstance(model, ResNet):
        return (model.conv1.in_channels, 32, 32)
    raise UserError(f"cannot guess the input shape of a {type(model).__name__}; pass "
                    "input_shape=[C, H, W]")


def _example_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    return torch.randn(1, *input_shape, dtype=dtype, device=device)


def build_dependency_graph(model: nn.Module, input_shape: Sequence[int]) -> tp.DependencyGraph:
    """Trace ``model`` into a torch-pruning DependencyGraph that knows PadShortcut.

    Tracing runs one forward pass in eval mode (no statistics change); the model's
    training/eval mode is restored afterwards.
    """
    shape = check_input_shape(input_shape)
    for name, m in model.named_modules():
        if isinstance(m, PadShortcut):
            valid = [c for c in m.index if c >= 0]
            if len(valid) != len(set(valid)):
                raise UserError(f"{name}: a pad shortcut that copies one input channel to "
                                "several outputs is not supported by VACL pruning")
    pruner = PadShortcutPruner()
    was_training = model.training
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(
                model, _example_input(model, shape), customized_pruners={PadShortcut: pruner},
                verbose=False)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - tracing a user model can fail in many ways
        raise UserError(f"cannot trace the model with an input of shape {list(shape)} "
                        f"({type(e).__name__}: {e}); pass the input_shape the model expects "
                        "as [C, H, W]") from None
    finally:
        model.train(was_training)
    _couple_pad_channels(dg, pruner)
    return dg


def is_conv(module: Any) -> bool:
    """A (non-transposed) convolution: weight ``[out, in / groups, *kernel]``."""
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed


def _supported(module: Any) -> bool:
    return is_conv(module) or isinstance(module, (nn.Linear, nn.modules.batchnorm._BatchNorm,
                                                  PadShortcut))


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(False)) or any(True for _ in module.buffers(False))


def _classify(dg: tp.DependencyGraph, module: Any, handler: Any) -> str | None:
    """Role of a group item, or None for parameter-free glue ops (add, relu, reshape, ...)."""
    if isinstance(module, PadShortcut):
        return PAD_OUT if dg.is_out_channel_pruning_fn(handler) else PAD_IN
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return BN
    if is_conv(module) or isinstance(module, nn.Linear):
        return OUT if dg.is_out_channel_pruning_fn(handler) else IN
    return None


def _is_residual_add(module: Any) -> bool:
    return isinstance(module, tp_ops._ElementWiseOp) and "AddBackward" in str(module._grad_fn)


def discover_groups(model: nn.Module, input_shape: Sequence[int]) -> GroupSet:
    """Trace ``model`` with an input of shape ``input_shape`` ([C, H, W]) and list its groups.

    Works for any model built from Conv/BatchNorm/Linear layers, residual additions and
    resprune's PadShortcut. Groups whose channel reaches the model output (the logits) are not
    prunable and left out; so are groups that touch layers resprune cannot prune (their names
    and the reason are in ``GroupSet.skipped``).
    """
    shape = check_input_shape(input_shape)
    dg = build_dependency_graph(model, shape)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}

    raw: list[tuple[set[Member], bool, str | None]] = []  # members, has_add, skip reason
    covered: set[tuple[str, int]] = set()
    for root_name, root in model.named_modules():
        if not (is_conv(root) or isinstance(root, nn.Linear)) or root not in dg.module2node:
            continue
        pruner = dg.get_pruner_of_module(root)
        n_out = pruner.get_out_channels(root)
        todo = [c for c in range(n_out) if (root_name, c) not in covered]
        if not todo:
            continue
        group = dg.get_pruning_group(root, pruner.prune_out_channels, todo)
        per_root: dict[int, tuple[set[Member], list[bool], list[str]]] = {
            c: (set(), [False], []) for c in todo}
        for item in group.items:
            dep, idxs, roots = item.dep, item.idxs, item.root_idxs
            target = dep.target.module
            role = _classify(dg, target, dep.handler)
            # a channel written by a node nobody reads is part of the model output (logits)
            is_output = isinstance(target, tp_ops._OutputOp) or (
                not dep.target.outputs and role not in (IN, PAD_IN))
            for idx, r in zip(idxs, roots):
                members, has_add, reasons = per_root[r]
                if is_output:
                    reasons.append("reaches the model output")
                if role is not None:
                    members.add(Member(names[target], role, int(idx)))
                elif _is_residual_add(target):
                    has_add[0] = True
                elif isinstance(target, nn.Module) and not _supported(target) and _has_state(
                        target):
                    reasons.append(f"touches unsupported layer {names.get(target, target)}")
                elif isinstance(target, nn.Parameter):
                    reasons.append("touches a free parameter")
        for c in todo:
            members, has_add, reasons = per_root[c]
            for m in members:
                if m.role == OUT:
                    covered.add((m.module, m.channel))
            raw.append((members, has_add[0], reasons[0] if reasons else None))

    raw = _merge_overlapping(raw)
    table = dict(model.named_modules())
    groups: list[ChannelGroup] = []
    skipped: list[tuple[str, str]] = []
    for members, has_add, reason in raw:
        ordered = tuple(sorted(members, key=lambda m: (order.get(m.module, 0), m.role,
                                                       m.channel)))
        g = ChannelGroup(len(groups), CROSS if has_add else FILTER, ordered)
        for m in ordered:
            mod = table[m.module]
            if is_conv(mod) and 1 < mod.groups == mod.out_channels:
                reason = reason or f"touches depthwise conv {m.module}"
        if reason is not None:
            skipped.append((g.name, reason))
            continue
        groups.append(g)

    bn_parent: dict[str, str] = {}
    for module, node in dg.module2node.items():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and len(node.inputs) == 1:
            src = node.inputs[0].module
            if is_conv(src) or isinstance(src, nn.Linear):
                bn_parent[names[module]] = names[src]
    return GroupSet(groups, bn_parent, shape, skipped)


def _merge_overlapping(raw: list[tuple[set[Member], bool, str | None]]
                       ) -> list[tuple[set[Member], bool, str | None]]:
    """Union groups that share a member (defensive: symmetric dependencies make this rare)."""
    parent = list(range(len(raw)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[Member, int] = {}
    for i, (members, _, _) in enumerate(raw):
        for m in members:
            j = owner.setdefault(m, i)
            if j != i:
                parent[find(i)] = find(j)
    merged: dict[int, tuple[set[Member], bool, str | None]] = {}
    for i, (members, has_add, reason) in enumerate(raw):
        r = find(i)
        if r not in merged:
            merged[r] = (set(members), has_add, reason)
        else:
            m0, a0, r0 = merged[r]
            merged[r] = (m0 | members, a0 or has_add, r0 or reason)
    return [merged[r] for r in sorted(merged)]


def modules_by_name(model: nn.Module, wanted: Iterable[str]) -> dict[str, nn.Module]:
    """Look up modules by qualified name; UserError if the model lacks one (a different model)."""
    table = dict(model.named_modules())
    out = {}
    for n in sorted(wanted):
        if n not in table:
            raise UserError(f"the model has no layer {n!r}: these channel groups were found on "
                            "a different model; discover them again on this one")
        out[n] = table[n]
    return out
