"""First-order Taylor importance of channel groups: what removing a group costs in loss.

Removing group ``g`` sets every scalar ``w_s`` of its group vector to zero (the producers'
filters and, with ``include_bn``, their BN gamma/beta; with ``include_consumers``, the
consumers' input slices). To first order the training loss changes by
``-sum_{s in g} w_s dL/dw_s``; the score is the square of that sum, averaged over
``batches`` training batches (Molchanov et al., 2019; HALP ranks channels by it per unit of
latency). Unlike the RMS scores it is *summed* over the layers a group spans, so a residual
stream channel that feeds every block of its stage weighs what all those blocks lose, which is
what a ranking by score per latency saved needs (both sides summed over the group).

The model is scored in eval mode (BatchNorm uses its running statistics and none of its
buffers change) with ``torch.autograd.grad``, so no ``.grad`` of the model is touched.
Under torchrun every process scores its share of each global batch and the per-group sums are
averaged before squaring, so the scores equal one process's on the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..data.loader import seeded_batches
from ..errors import UserError
from .groups import GroupSet
from .layout import Layout


def taylor_scores(model: nn.Module, groups: GroupSet, loader: Iterable, batches: int = 32,
                  include_bn: bool = True, include_consumers: bool = False,
                  seed: int = 0) -> torch.Tensor:
    """Mean over ``batches`` batches of ``(sum_{s in g} w_s dL/dw_s)^2`` per group (float64,
    on the CPU; higher = removing the group costs more).

    A resprune loader is set to epoch 0 and the global RNG is seeded with ``seed`` inside a
    fork, so the scores do not depend on what the loader or the RNG did before, and scoring
    does not change what they do after.
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise UserError(f"taylor scores need at least one batch, got {batches!r}")
    lay = Layout(model, groups, include_bn, include_consumers)
    params = [p for p in model.parameters() if p.requires_grad]
    dev = params[0].device if params else torch.device("cpu")
    member_group = lay.member_group.to(dev)
    acc = torch.zeros(lay.num_groups, dtype=torch.float64, device=dev)
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with seeded_batches(loader, batches, seed) as first:
            for x, y in first:
                acc += _batch_terms(model, lay, params, member_group, x.to(dev), y.to(dev))
                seen += 1
    finally:
        model.train(was_training)
    if seen == 0:
        raise UserError("taylor scores need training batches; the training loader is empty")
    return (acc / seen).cpu()


def _batch_terms(model: nn.Module, lay: Layout, params: list[torch.Tensor],
                 member_group: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(sum_{s in g} w_s dL/dw_s)^2`` per group for one (global) batch."""
    loss = F.cross_entropy(model(x).float(), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    by_param = {id(p): g for p, g in zip(params, grads)}
    with torch.no_grad():
        per_member = lay.member_sum(model, lambda p: _taylor_term(p, by_param))
        per_group = per_member.double().new_zeros(lay.num_groups)
        per_group.index_add_(0, member_group, per_member.double())
        # each process holds the mean loss of its slice: the global mean is their average
        distributed.all_reduce_sum(per_group)
        return (per_group / distributed.world_size()).square()


def _taylor_term(p: torch.Tensor, grads: dict[int, torch.Tensor | None]) -> torch.Tensor:
    g = grads.get(id(p))
    return torch.zeros_like(p) if g is None else p.detach() * g
