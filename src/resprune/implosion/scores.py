"""Priority terms: how important each erasable unit is (lowest priority is erased first).

Methods (``score_units(model, method)``):

* ``gate`` (default): ``|w|``, the learned gate. No data needed.
* ``norm``: the patent's data-dependent score, ``mean_n ||w * F(x_n)||_F`` over the samples of
  the first ``num_batches`` batches of a loader (eval mode, no gradients). ``F(x)`` is read
  through a forward pre-hook on every unit that re-runs its branch on a copy of the input.
* ``gate_bn``: ``|w| * ||gamma||_2``, the gate times the L2 norm of the scale of the branch's
  last BatchNorm: a gate near 1 on a branch whose output BN has collapsed still scores low.
* ``random``: seeded uniform scores, an ablation baseline.

A unit without a gate counts as ``w = 1``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .. import distributed
from ..data.loader import seeded_batches
from ..errors import UserError
from .gates import erasable_items, gate_value, last_bn

SCORE_METHODS = ("gate", "norm", "gate_bn", "random")


def check_method(method: str) -> None:
    if method not in SCORE_METHODS:
        raise UserError(f"unknown priority score {method!r}; choose one of: "
                        f"{', '.join(SCORE_METHODS)}")


def score_units(model: nn.Module, method: str = "gate", loader: Iterable | None = None,
                num_batches: int = 4, seed: int = 0) -> dict[str, float]:
    """``{unit name: priority}`` for every erasable unit of ``model``.

    ``loader`` (batches ``(x, y)`` or ``x``) and ``num_batches`` are used by ``norm`` only;
    the loader is read under a forked RNG seeded with ``seed`` and, if it has ``set_epoch``
    (resprune loaders), from epoch 0, so it gives the same batches every time. ``seed`` also
    seeds ``random``.
    """
    check_method(method)
    units = erasable_items(model)
    if method == "gate":
        return {n: abs(gate_value(u)) for n, u in units}
    if method == "gate_bn":
        out = {}
        for n, u in units:
            bn = last_bn(n, u)
            gamma = (float(bn.weight.detach().float().norm()) if bn.weight is not None
                     else float(bn.num_features) ** 0.5)
            out[n] = abs(gate_value(u)) * gamma
        return out
    if method == "random":
        g = torch.Generator().manual_seed(int(seed))
        vals = torch.rand(len(units), generator=g, dtype=torch.float64).tolist()
        return {n: v for (n, _), v in zip(units, vals)}
    if loader is None:
        raise UserError("the 'norm' priority score needs data: pass a loader "
                        "(score_units(model, 'norm', loader=train_loader))")
    if not isinstance(num_batches, int) or num_batches < 1:
        raise UserError(f"num_batches must be an integer >= 1, got {num_batches!r}")
    return _branch_norms(model, units, loader, num_batches, seed)


def batch_inputs(batch) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(x, torch.Tensor):
        raise UserError(f"loader batches must be tensors or (inputs, targets) pairs, got "
                        f"{type(x).__name__}")
    return x


@torch.no_grad()
def _branch_norms(model: nn.Module, units: list[tuple[str, nn.Module]], loader: Iterable,
                  num_batches: int, seed: int) -> dict[str, float]:
    sums = {n: 0.0 for n, _ in units}
    count = 0

    def hook_for(name: str):
        def hook(unit: nn.Module, args: tuple) -> None:
            f = unit.branch(args[0].clone()) * gate_value(unit)
            sums[name] += float(f.flatten(1).double().norm(dim=1).sum())
        return hook

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    handles = [u.register_forward_pre_hook(hook_for(n)) for n, u in units]
    model.eval()
    try:
        with seeded_batches(loader, num_batches, seed) as batches:
            for batch in batches:
                x = batch_inputs(batch).to(device)
                model(x)
                count += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    # under torchrun each process saw its slice of the same batches: sum over all of them
    total = torch.tensor([*sums.values(), count], dtype=torch.float64, device=device)
    distributed.all_reduce_sum(total)
    count = int(total[-1].item())
    if count == 0:
        raise UserError("the loader given to the 'norm' priority score yielded no batches")
    return {n: float(s) / count for n, s in zip(sums, total[:-1].tolist())}
