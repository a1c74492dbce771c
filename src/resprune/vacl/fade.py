"""Fade the channel groups a pruning rule will remove, so that pruning them changes nothing.

``resprune vacl --fade linear`` picks the groups once, by a dry run of the params or MACs
target on the input model (the same groups ``--reg-groups pruned`` regularizes), and fades them
over the sparsity epochs with :class:`resprune.train.Fade`: each producer's output filter and
the gamma/beta of the BN that follows it fall linearly to exactly zero, so the group's channel
(every layer of a cross-layer group at once: the whole residual-stream channel) contributes
nothing. The VACL regularizer still acts as configured (``lam`` may be 0). Pruning then
removes exactly these zero groups: top-1 right after pruning equals top-1 before it, and the
fine-tuning starts from an intact network instead of a damaged one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from torch import nn

from ..errors import UserError
from ..train.fade import Slice
from .groups import BN, OUT, GroupSet, modules_by_name


def group_slices(model: nn.Module, groups: GroupSet, names: Iterable[str]) -> list[Slice]:
    """The parameter slices that carry the channels of the named groups.

    Producer filters (conv / linear weight rows and biases) and the affine parameters of the
    BN layers in the group; one :class:`Slice` per parameter, channels sorted.
    """
    by_name = {g.name: g for g in groups}
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise UserError(f"unknown channel group(s) {', '.join(unknown[:3])}: the groups were "
                        "found on a different model")
    chans: dict[tuple[str, str], set[int]] = defaultdict(set)
    for name in wanted:
        for m in by_name[name].members:
            if m.role in (OUT, BN):
                for pname in ("weight", "bias"):
                    chans[(m.module, pname)].add(m.channel)
    mods = modules_by_name(model, {mod for mod, _ in chans})
    return [Slice(mod, pname, tuple(sorted(c))) for (mod, pname), c in sorted(chans.items())
            if getattr(mods[mod], pname, None) is not None]
