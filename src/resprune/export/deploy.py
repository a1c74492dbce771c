"""The deployment form of a model: priority gates and BatchNorms folded into the convolutions.

``deploy(model)`` returns an inference-only copy computing the same logits in eval mode with
fewer operators: every Network Implosion gate is folded into its branch's last BN
(:func:`resprune.implosion.fold_gates`), then every BN fed by a convolution (or linear layer)
whose output goes nowhere else is folded into it (``w' = w * gamma / sqrt(var + eps)``,
``b' = (b - mean) * gamma / sqrt(var + eps) + beta``; PyTorch's ``fuse_conv_bn_eval``) and
replaced by an identity. Which BN follows which conv comes from torch-pruning's dependency
graph, so any Conv/BN network works, not only the zoo. The copy's logits are checked against
the model's before it is returned.

It is for running, not for training or saving as a resprune run (``arch.json`` describes
models with BNs): PyTorch eager then skips one memory pass per BN and one multiply per gate.
torch's ONNX exporter folds BNs by itself, so for ONNX the fold removes the gates'
multiplies only (``resprune export --fold``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..errors import UserError

_BN = nn.modules.batchnorm._BatchNorm
_CONV = nn.modules.conv._ConvNd


def _foldable_pairs(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, str]]:
    """``(conv or linear, BN)`` names where the BN's only input is the layer and the layer's
    only consumer is the BN."""
    from ..vacl.groups import build_dependency_graph

    dg = build_dependency_graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    pairs = []
    for module, node in dg.module2node.items():
        if not isinstance(module, _BN) or len(node.inputs) != 1:
            continue
        src = node.inputs[0]
        if isinstance(src.module, (_CONV, nn.Linear)) and len(src.outputs) == 1:
            if isinstance(src.module, _CONV) and src.module.transposed:
                continue
            pairs.append((names[src.module], names[module]))
    return pairs


def model_input_shape(model: nn.Module,
                      input_shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """``input_shape`` if given, else the model's preprocessing input size, else the zoo
    family's default."""
    from ..vacl.groups import default_input_shape

    pre = getattr(model, "preprocess", None)
    if input_shape is not None:
        return tuple(input_shape)
    if pre:
        return (model.conv1.in_channels, pre["input_size"], pre["input_size"])
    return default_input_shape(model)


@torch.no_grad()
def check_logits(model: nn.Module, net: nn.Module, shape: Sequence[int], atol: float,
                 what: str) -> None:
    """UserError unless ``net`` gives ``model``'s eval-mode logits on two seeded random
    inputs, up to ``atol`` times their largest magnitude (``what``: the transformation)."""
    ref = next(model.parameters())
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0)).to(ref.device,
                                                                                 ref.dtype)
    was = model.training
    model.eval()
    try:
        want, got = model(x), net(x)
    finally:
        model.train(was)
    err = float((want - got).abs().max())
    scale = float(want.abs().max()) or 1.0
    if err > atol * scale:
        raise UserError(f"{what} changed the logits by {err:.3g} (largest logit {scale:.3g}); "
                        "the model is not deployed")


@torch.no_grad()
def deploy(model: nn.Module, input_shape: Sequence[int] | None = None,
           atol: float = 1e-4, pad_to: int | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` with gates and BatchNorms folded (module docstring).

    ``input_shape`` ``[C, H, W]`` (for tracing and the check) defaults to the model's
    preprocessing or the zoo family's default. ``pad_to=N`` first pads every channel count
    to a multiple of N (:func:`resprune.export.pad_channels`: zero channels, same logits;
    resprune ResNets only). Raises UserError if the copy's logits differ from the model's
    by more than ``atol`` times their largest magnitude.
    """
    from ..implosion import fold_gates
    from ..implosion.erase import set_submodule

    shape = model_input_shape(model, input_shape)
    if next(model.parameters(), None) is None:
        raise UserError("the model has no parameters to fold")
    if pad_to is not None:
        from .pad import pad_channels

        net = pad_channels(model, pad_to, atol)
    else:
        net = copy.deepcopy(model).eval()
    fold_gates(net)
    for conv_name, bn_name in _foldable_pairs(net, shape):
        conv, bn = net.get_submodule(conv_name), net.get_submodule(bn_name)
        fused = (fuse_conv_bn_eval(conv, bn) if isinstance(conv, _CONV)
                 else fuse_linear_bn_eval(conv, bn))
        set_submodule(net, conv_name, fused)
        set_submodule(net, bn_name, nn.Identity())
    check_logits(model, net, shape, atol, "folding" if pad_to is None else
                 "padding and folding")
    return net
