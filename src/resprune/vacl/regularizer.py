"""VACL's variance-aware group regularizer and the RMS group scores used for pruning.

Per group ``g`` with member layers ``l`` (see :mod:`resprune.vacl.layout`), per-layer slice
norms ``n_gl = ||w_gl||_2``, their mean ``mu_g`` and population variance ``sigma_g^2`` over the
``m_g`` members, and ``p_g`` the number of scalars in the group:

* ``moments`` (default): ``sqrt(p_g) * sqrt(m_g) * sqrt(mu_g^2 + beta * sigma_g^2)``. Since
  ``m (mu^2 + sigma^2) = sum_l n_gl^2``, ``beta = 1`` is exactly cross-layer group lasso
  ``sqrt(p_g) ||w_g||_2``; ``beta > 1`` additionally penalises members of unequal size, so a
  group's layers shrink to zero together or stay alive together.
* ``additive``: ``sqrt(p_g) ||w_g||_2 + beta * sigma_g^2``.
* ``mean_std``: ``sqrt(p_g) * (mu_g + beta * sigma_g)``.

Cross-layer groups get the chosen form; filter groups (inside a block) get plain filter-wise
group lasso ``sqrt(p_g) ||w_g||_2``. The regularizer returns ``lam * sum_g R_g``.

A small ``EPS`` inside every square root keeps gradients finite when a group reaches zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .groups import GroupSet, default_input_shape, discover_groups
from .layout import Layout

FORMS = ("moments", "additive", "mean_std")
EPS = 1e-12


def _nonneg(value: Any, what: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0:
        raise UserError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


class Regularizer:
    """VACL regularizer ``reg(model) -> lam * R`` (a scalar tensor), usable as a loss term.

    Args:
        model: the network; its channel groups are discovered by tracing it once, here.
        form: ``"moments"`` (default), ``"additive"`` or ``"mean_std"`` (module docstring).
        beta: weight of the variance term (default 4; ``moments`` with ``beta=1`` is group lasso).
        lam: overall strength (the loss is ``CE + lam * R``).
        include_bn: put each producer's BN gamma/beta into its slice (default on: a zeroed
            filter would otherwise leak its BN shift into the residual stream).
        include_consumers: also put the consumers' input slices into the groups (default off).
        input_shape: ``[C, H, W]`` used for tracing; defaults to ``[in_channels, 32, 32]`` for
            resprune models (channel groups do not depend on the spatial size).
        groups: reuse an existing :class:`GroupSet` instead of tracing again.
        only: names of the groups to regularize (``None``: all). Regularizing only the
            groups a pruning rule will remove (``--reg-groups pruned``) drives exactly those to
            zero while the rest train freely, so accuracy right after pruning stays close to
            before it (the idea of growing-regularization pruning, Wang et al. 2021).

    The regularizer holds no reference to the model's parameters: every call reads them from
    the model it is given, so it survives ``load_state_dict`` and device moves. After pruning,
    build a new one (a call on a pruned model raises UserError).
    """

    def __init__(self, model: nn.Module, form: str = "moments", beta: float = 4.0,
                 lam: float = 1e-4, include_bn: bool = True, include_consumers: bool = False,
                 input_shape: Sequence[int] | None = None, groups: GroupSet | None = None,
                 only: Sequence[str] | None = None):
        if form not in FORMS:
            raise UserError(f"unknown VACL regularizer form {form!r}; choose one of: "
                            f"{', '.join(FORMS)}")
        self.form = form
        self.beta = _nonneg(beta, "VACL beta")
        self.lam = _nonneg(lam, "VACL lambda (lam)")
        self.include_bn = bool(include_bn)
        self.include_consumers = bool(include_consumers)
        if groups is None:
            groups = discover_groups(model, input_shape if input_shape is not None
                                     else default_input_shape(model))
        self.groups = groups
        self.layout = Layout(model, groups, self.include_bn, self.include_consumers)
        self.select(only)

    def select(self, only: Sequence[str] | None) -> None:
        """Regularize only the groups named in ``only`` (``None``: every group)."""
        self._mask_on: dict[tuple, torch.Tensor] = {}  # the mask per (device, dtype), copied once
        if only is None:
            self.mask = None
            return
        names = {g.name: g.index for g in self.groups}
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise UserError(f"unknown channel group(s) {', '.join(unknown[:3])}")
        mask = torch.zeros(len(names), dtype=torch.float64)
        mask[[names[n] for n in only]] = 1.0
        self.mask = mask

    def __repr__(self) -> str:
        return (f"Regularizer(form={self.form!r}, beta={self.beta}, lam={self.lam}, "
                f"include_bn={self.include_bn}, include_consumers={self.include_consumers}, "
                f"groups={self.groups.counts()})")

    def per_group(self, model: nn.Module) -> torch.Tensor:
        """``R_g`` of every group (before ``lam``), differentiable."""
        return self._per_group(self.layout.member_sq(model))

    def _per_group(self, sq: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        t = lay.tensors(sq.device, sq.dtype)
        mg, size, count = t["member_group"], t["size"], t["count"]
        sqrt_p = size.sqrt()
        s2 = sq.new_zeros(lay.num_groups).index_add(0, mg, sq)
        lasso = sqrt_p * torch.sqrt(s2 + EPS)
        if not bool(lay.cross.any()):
            return lasso
        n = torch.sqrt(sq + EPS)
        mu = sq.new_zeros(lay.num_groups).index_add(0, mg, n) / count
        var = sq.new_zeros(lay.num_groups).index_add(0, mg, (n - mu[mg]).square()) / count
        if self.form == "moments":
            cross = sqrt_p * count.sqrt() * torch.sqrt(mu.square() + self.beta * var)
        elif self.form == "additive":
            cross = lasso + self.beta * var
        else:
            cross = sqrt_p * (mu + self.beta * torch.sqrt(var + EPS))
        return torch.where(t["cross"], cross, lasso)

    def _total(self, r: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            key = (r.device, r.dtype)
            if key not in self._mask_on:
                self._mask_on[key] = self.mask.to(r.device, r.dtype)
            r = r * self._mask_on[key]
        return self.lam * r.sum()

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return self._total(self.per_group(model))

    @torch.no_grad()
    def add_grad_(self, model: nn.Module) -> torch.Tensor:
        """Add the gradient of ``self(model)`` to the parameters' ``.grad`` in place and
        return its value (detached): the same as adding ``self(model)`` to the loss before
        ``backward()``, in a few ops per parameter shape instead of several per tensor.

        Call it between ``loss.backward()`` and ``optimizer.step()``; the
        :class:`~resprune.train.Trainer` does so for a Regularizer among its ``loss_terms``.
        The term depends on the weights only through the members' squared norms ``sq``, so
        its gradient on a member's slice ``w`` is ``2 * dR/dsq * w``: ``dR/dsq`` comes from
        autograd on the small per-member graph, and the slices' gradients from the same
        concatenations the value is read from, added with one ``torch._foreach_add_`` per
        shape. Frozen parameters (``requires_grad=False``) get nothing, as in ``backward()``.
        With ``include_consumers`` the consumers' input slices are read per tensor, so it
        backpropagates the term instead (same result, no saving).
        """
        lay = self.layout
        params = lay.params(model)
        if not params:
            return torch.zeros(())
        if lay.in_entries:
            # a weight read both ways is one tensor; frozen ones get no gradient, as in backward
            unique = list({id(p): p for p in params if p.requires_grad}.values())
            with torch.enable_grad():
                value = self(model)
                grads = torch.autograd.grad(value, unique) if unique else ()
            _add_grads(unique, list(grads))
            return value.detach()
        cats = lay.bucket_cats(params)
        t = lay.tensors(cats[0].device, cats[0].dtype)
        leaf = lay.member_sums(params, cats).requires_grad_()
        with torch.enable_grad():
            value = self._total(self._per_group(leaf))
            (coef,) = torch.autograd.grad(value, leaf)
        # rows of no group read the dummy last member, whose coefficient is 0
        coef2 = torch.cat([coef * 2, coef.new_zeros(1)]).index_select(0, t["slot_member"])
        start = 0
        for ks, cat in zip(lay.buckets, cats):
            rows = cat.shape[0]
            grad = cat * coef2[start:start + rows].reshape(rows, *[1] * (cat.dim() - 1))
            start += rows
            _add_grads([params[k] for k in ks],
                       list(grad.split([params[k].shape[0] for k in ks])))
        return value.detach()


def _add_grads(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """``p.grad += g`` for every parameter that requires a gradient (one fused op for those
    that have one already; the others get ``g``)."""
    have = [(p.grad, g) for p, g in zip(params, grads) if p.grad is not None and p.requires_grad]
    if have:
        torch._foreach_add_([a for a, _ in have], [g for _, g in have])
    for p, g in zip(params, grads):
        if p.grad is None and p.requires_grad:
            p.grad = g.clone(memory_format=torch.preserve_format)


SCORES = ("rms", "layer_rms", "taylor")
#: scores that read training data (group_scores needs ``loader``)
DATA_SCORES = ("taylor",)


def group_scores(model: nn.Module, groups: GroupSet, include_bn: bool = True,
                 include_consumers: bool = False, score: str = "layer_rms", *,
                 loader: Any = None, batches: int = 32, seed: int = 0) -> torch.Tensor:
    """One score per group (float64); pruning removes the lowest first.

    ``score="rms"``: the RMS of the group's weights, ``||w_g||_2 / sqrt(p_g)``. The group vector
    is the same as the regularizer's (producer filters, plus their BN gamma/beta with
    ``include_bn``, plus consumer slices with ``include_consumers``), so a group driven to zero
    by the regularizer scores exactly 0.

    ``score="layer_rms"``: the same RMS after every member's slice is divided by its layer's
    mean channel RMS (the mean over that layer's channels of ``||w_gl|| / sqrt(p_gl)``). Raw
    weight scales differ between layers (He initialisation scales a conv by
    ``1/sqrt(fan_in)``, so wide late stages have smaller weights); normalising ranks channels by
    how they compare with their own layer, so one global ranking does not strip the late stages
    first merely for their scale. Zeroed groups still score exactly 0; a layer whose channels are
    all zero scores 0.

    ``score="taylor"``: the first-order Taylor estimate of the training loss removing the group
    costs, squared and averaged over ``batches`` batches of ``loader`` (training batches, epoch 0
    under ``seed``), summed over every layer the group spans
    (:func:`resprune.vacl.taylor.taylor_scores`). Zeroed groups score exactly 0 here too.
    """
    if score not in SCORES:
        raise UserError(f"unknown group score {score!r}: choose one of {', '.join(SCORES)}")
    if score in DATA_SCORES:
        if loader is None:
            raise UserError(f"group score {score!r} reads training batches: pass loader=")
        from .taylor import taylor_scores

        return taylor_scores(model, groups, loader, batches, include_bn, include_consumers,
                             seed)
    return _weight_scores(model, groups, include_bn, include_consumers, score)


@torch.no_grad()
def _weight_scores(model: nn.Module, groups: GroupSet, include_bn: bool,
                   include_consumers: bool, score: str) -> torch.Tensor:
    lay = Layout(model, groups, include_bn, include_consumers)
    sq = lay.member_sq(model).double().cpu()
    if score == "layer_rms":
        rms = torch.sqrt(sq / lay.member_size.clamp_min(1))
        total = torch.zeros(lay.num_layers, dtype=torch.float64).index_add(
            0, lay.member_layer, rms)
        mean = total / torch.bincount(lay.member_layer, minlength=lay.num_layers).double()
        ref = mean[lay.member_layer]
        sq = torch.where(ref > 0, sq / ref.square().clamp_min(1e-300), torch.zeros_like(sq))
    s2 = torch.zeros(lay.num_groups, dtype=torch.float64).index_add(0, lay.member_group, sq)
    return torch.sqrt(s2 / lay.size)
