"""Least-squares reconstruction of a pruned model's layers from its unpruned input.

Physical removal leaves a converged network near chance on the validation split (10-18 % on
the CIFAR-10 ResNet-56 rows of ``benchmarks/cifar10_jpeg_resnet56.py``, after VACL's channel
removal or implosion's cut of 12 units): every layer after a removed channel or unit sees
inputs it was not trained on, and the errors compound with depth.
:func:`reconstruct` re-fits the weights that remain, layer by layer in execution order, so
that each conv / linear layer of the pruned model reproduces the output the same layer of
the unpruned model gives on the channels it kept:

    minimise over W', b:  || Y[:, kept] - (W' * X' + b) ||^2
                          + ridge * mean(diag(X'^T X')) * ||W'||^2

where ``X'`` is the pruned model's own input to the layer (every earlier layer already
re-fitted, so the fit also corrects the error accumulated upstream) and ``Y`` the unpruned
layer's output on the same images (training images, never the validation split). A conv
with no bias that feeds a BatchNorm gets its fitted offset ``b`` folded into that
BatchNorm's running mean, so the exported model has no extra op. Each fit is one ridge
regression over the layer's unfolded input patches (a grouped conv: one per cardinal
group); the normal equations are accumulated batch by batch in float64, so memory does not
grow with the number of images.

The mapping from a pruned layer to its unpruned one is by module name, and from its output
channels to the unpruned ones by ``kept_out`` (:func:`resprune.vacl.prune`'s report,
``kept_out_channels``); a layer absent from ``kept_out`` kept all its outputs (an implosion
cut: erased units are gone, every other layer keeps its name and width). Layers the
unpruned model lacks, or whose padding is not zeros, are left as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..data.loader import seeded_batches
from ..errors import UserError
from ..measure._device import model_device

_CONV = nn.modules.conv._ConvNd
_BATCHNORM = nn.modules.batchnorm._BatchNorm


#: the options ``--reconstruct`` / ``--reconstruct-ridge`` of vacl, implode and compress
RECONSTRUCT_HELP = ("after each removal (a pruning step, an implosion cut), re-fit every "
                    "remaining conv and linear layer by least squares, in execution order, so "
                    "that it reproduces the unpruned model's outputs on the channels it kept, "
                    "on N training images (0: off; docs/vacl.md, \"Reconstruction\")")
RIDGE_HELP = ("with --reconstruct: the weight penalty of each least-squares fit, relative to "
              "the layer inputs' mean energy")


def summarize(got: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A run's record of :func:`reconstruct`'s result: images, ridge, layers re-fitted and
    their mean relative output error before and after, seconds (the per-layer list left
    out)."""
    fitted = [r for r in got["layers"] if r["error_before"] > 0]

    def mean(key: str) -> float:
        return sum(r[key] for r in fitted) / len(fitted) if fitted else 0.0

    return {"samples": got["samples"], "ridge": got["ridge"], "layers_fitted": len(fitted),
            "error_before": mean("error_before"), "error_after": mean("error_after"),
            "seconds": round(seconds, 3)}


def describe(rec: dict[str, Any]) -> str:
    """One log line of a :func:`summarize` record."""
    return (f"{rec['layers_fitted']} layer(s) re-fitted on {rec['samples']} training images, "
            f"mean relative output error {rec['error_before']:.3f} -> "
            f"{rec['error_after']:.3f} ({rec['seconds']:.0f} s)")


#: numbers (rows x features) of one chunk of regression inputs: 128 MiB in float64
_CHUNK = 1 << 24


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has run."""


def _calibration(loader: Iterable, samples: int, seed: int) -> list[torch.Tensor]:
    images: list[torch.Tensor] = []
    seen = 0
    with seeded_batches(loader, samples, seed) as first:
        for x, _ in first:
            images.append(x[: samples - seen].detach())
            seen += images[-1].shape[0]
            if seen >= samples:
                break
    if not images:
        raise UserError("reconstruction read no images: the training loader is empty")
    return images


def _execution_order(model: nn.Module, x: torch.Tensor) -> tuple[list[str], dict[str, str]]:
    """Names of the conv/linear layers of ``model`` in the order they run on ``x``, and the
    BatchNorm each one feeds directly (by name), where there is one."""
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    produced: dict[int, str] = {}
    feeds: dict[str, str] = {}
    alive: list[Any] = []  # outputs held so that no later tensor reuses their id()
    handles = []

    def after(m: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(m, (_CONV, nn.Linear)) and names[m] not in order:
            order.append(names[m])
            produced[id(out)] = names[m]
            alive.append(out)

    def before(m: nn.Module, inp: Any) -> None:
        src = produced.get(id(inp[0]))
        if src is not None and src not in feeds:
            feeds[src] = names[m]

    for m in model.modules():
        if isinstance(m, (_CONV, nn.Linear)):
            handles.append(m.register_forward_hook(after))
        elif isinstance(m, _BATCHNORM):
            handles.append(m.register_forward_pre_hook(before))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return order, feeds


def _capture(model: nn.Module, layer: nn.Module, x: torch.Tensor, want: str) -> torch.Tensor:
    """The input (``want="in"``) or output (``"out"``) of ``layer`` when ``model`` runs on
    ``x``; the forward pass stops right after the layer."""
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, inp: Any, out: Any) -> None:
        got.append(inp[0] if want == "in" else out)
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not got:
        raise RuntimeError("internal error: the layer did not run")
    return got[0]


def _patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``[N * L, C_in * k * k]`` rows of the conv's input patches (L output positions)."""
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                    stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _rows(layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression inputs and targets of one batch: one row per output position."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    return _patches(layer, x), y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


def _fittable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return (isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str))


@torch.no_grad()
def reconstruct(original: nn.Module, pruned: nn.Module, loader: Iterable, samples: int,
                kept_out: dict[str, list[int]] | None = None, *, ridge: float = 1e-3,
                seed: int = 0) -> dict[str, Any]:
    """Re-fit ``pruned``'s conv and linear layers in place to reproduce ``original``'s
    outputs on the channels they kept, on the first ``samples`` images of ``loader``.

    ``kept_out`` maps a layer name to the unpruned output channels it kept, in order
    (``prune(...)["kept_out_channels"]``); ``ridge`` is the weight penalty relative to the
    inputs' mean energy. Both models are used in eval mode and left in the mode they were
    in; ``original`` is not changed. Returns ``{"samples", "layers", "ridge"}``: the images
    read and, per re-fitted layer, its relative output error before and after the fit.
    Under torchrun each process reads its share of the images from a resprune loader (its
    slices of the same batches) and the fits' sums are added over the processes, so every
    process gets the same weights, those of one process reading all the images (exactly when
    ``samples`` is a multiple of the global batch size, up to rounding).
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UserError(f"reconstruction needs at least 1 image, got {samples!r}")
    if not ridge >= 0:
        raise UserError(f"reconstruction ridge must be >= 0, got {ridge!r}")
    kept_out = kept_out or {}
    device = model_device(pruned)
    modes = (original.training, pruned.training)
    original.eval()
    pruned.eval()
    try:
        # under torchrun: this process's share of the images (its slices of the same batches)
        share = -(-samples // distributed.world_size())
        images = [x.to(device) for x in _calibration(loader, share, seed)]
        order, feeds = _execution_order(pruned, images[0])
        ours = dict(pruned.named_modules())
        theirs = dict(original.named_modules())
        layers = []
        for name in order:
            layer, ref = ours[name], theirs.get(name)
            if ref is None or type(ref) is not type(layer) or not _fittable(layer):
                continue
            layers.append({"layer": name, **_fit(layer, ref, name, original, pruned, images,
                                                  kept_out, ridge, ours.get(feeds.get(name)))})
    finally:
        original.train(modes[0])
        pruned.train(modes[1])
    seen = torch.tensor([sum(x.shape[0] for x in images)], dtype=torch.float64)
    distributed.all_reduce_sum(seen)
    return {"samples": int(seen), "ridge": ridge, "layers": layers}


def _fit(layer: nn.Module, ref: nn.Module, name: str, original: nn.Module, pruned: nn.Module,
         images: list[torch.Tensor], kept_out: dict[str, list[int]], ridge: float,
         bn: nn.Module | None) -> dict[str, float]:
    groups = getattr(layer, "groups", 1)
    outs = layer.weight.shape[0]
    keep = kept_out.get(name, list(range(ref.weight.shape[0])))
    if len(keep) != outs:
        raise UserError(f"layer {name}: {outs} output channels but kept_out lists {len(keep)}")
    keep_t = torch.as_tensor(keep, dtype=torch.long, device=layer.weight.device)
    ob = outs // groups
    ib = layer.weight.shape[1]
    feats = layer.weight[0].numel()  # inputs per output, per cardinal group
    device = layer.weight.device
    gram = torch.zeros(groups, feats + 1, feats + 1, dtype=torch.float64, device=device)
    cross = torch.zeros(groups, feats + 1, ob, dtype=torch.float64, device=device)
    energy = before = 0.0
    for x in images:
        xin = _capture(pruned, layer, x, "in")
        target = _capture(original, ref, x, "out").index_select(1, keep_t)
        now = layer(xin)
        before += float((now - target).double().pow(2).sum())
        energy += float(target.double().pow(2).sum())
        # a few images at a time: rows x features stays below _CHUNK numbers per product
        rows = target[0].numel() // max(1, target.shape[1]) if target.dim() > 2 else 1
        step = max(1, _CHUNK // max(1, rows * (feats + 1)))
        for i in range(0, x.shape[0], step):
            for g in range(groups):
                xg = xin[i:i + step] if groups == 1 else xin[i:i + step, g * ib:(g + 1) * ib]
                tg = (target[i:i + step] if groups == 1
                      else target[i:i + step, g * ob:(g + 1) * ob])
                p, t = _rows(layer, xg, tg)
                p = torch.cat([p.double(), torch.ones(p.shape[0], 1, dtype=torch.float64,
                                                      device=p.device)], 1)
                gram[g] += p.T @ p
                cross[g] += p.T @ t.double()
    # under torchrun each process read its own share of the images: sum them, so every
    # process solves the same equations as one process reading all of them
    totals = torch.tensor([energy, before], dtype=torch.float64, device=device)
    distributed.all_reduce_sum(gram, cross, totals)
    energy, before = float(totals[0]), float(totals[1])
    if before <= 1e-12 * energy:  # input unchanged and every output kept: already exact
        return {"error_before": 0.0, "error_after": 0.0}
    has_offset = layer.bias is not None or bn is not None
    size = feats + (1 if has_offset else 0)
    weights, offsets, residual = [], [], 0.0
    for g in range(groups):
        a = gram[g, :size, :size].cpu()  # small: solved on the CPU (gelsd is CPU-only)
        reg = a.clone()
        scale = float(reg.diagonal()[:feats].mean()) or 1.0
        reg.diagonal()[:feats] += ridge * scale
        c = cross[g, :size].cpu()
        try:
            sol = torch.linalg.solve(reg, c)
        except torch.linalg.LinAlgError:  # inputs that are always zero (or ridge 0): the
            sol = torch.linalg.lstsq(reg, c, driver="gelsd").solution  # least-norm fit
        # what the fit leaves, from the normal equations: |t|^2 - 2 <sol, c> + sol^T a sol
        residual += float(-2 * (sol * c).sum() + (sol * (a @ sol)).sum())
        weights.append(sol[:feats].T)
        offsets.append(sol[feats] if has_offset else torch.zeros(ob, dtype=torch.float64))
    w = torch.cat(weights).to(layer.weight.dtype).reshape(layer.weight.shape)
    layer.weight.data.copy_(w.to(layer.weight.device))
    offset = torch.cat(offsets).to(layer.weight.dtype).to(layer.weight.device)
    if layer.bias is not None:
        layer.bias.data.copy_(offset)
    elif bn is not None and bn.running_mean is not None:
        bn.running_mean.sub_(offset)  # BN(conv(x) + c) with the mean moved by c
    energy = energy or 1.0
    return {"error_before": before / energy, "error_after": max(0.0, energy + residual) / energy}
