"""Static size measures of a model: parameters, multiply-accumulates, depth.

MACs are counted with PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` on one image
(batch of 1) in eval mode: MACs = counted FLOPs / 2, since the counter counts a
multiply-accumulate as two FLOPs. As in the pruning literature, only convolutions and matrix
products (the fully connected layer) are counted; batch norm, ReLU, pooling, the residual
additions and zero-padding shortcuts are not.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import UserError


def count_params(model: nn.Module) -> int:
    """Number of learnable parameters (shared parameters counted once; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def _input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise UserError(f"input shape must be three positive integers (C, H, W), "
                        f"got {list(input_shape)!r}")
    return shape


def _param_like(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, (p.dtype if p.dtype.is_floating_point else torch.float32)
    return torch.device("cpu"), torch.float32


class _EvalMode:
    """Put a model in eval mode and restore every submodule's own mode afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, training in self.modes:
            m.training = training


def _count_flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with _EvalMode(model), torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on a single ``(C, H, W)`` image.

    The pass runs in eval mode on a copy of the model on PyTorch's ``meta`` device (shapes
    only, no arithmetic, so even ResNet-50 at 224x224 takes milliseconds). A model whose
    forward cannot run on ``meta`` is run once for real on its own device instead, with its
    train/eval mode restored afterwards. Either way the caller's model is left as it was.
    """
    shape = _input_shape(input_shape)
    device, dtype = _param_like(model)
    try:
        meta = copy.deepcopy(model).to("meta")
        flops = _count_flops(meta, torch.zeros((1, *shape), device="meta", dtype=dtype))
    except Exception:  # noqa: BLE001 - any failure: fall back to a real forward pass
        flops = _count_flops(model, torch.zeros((1, *shape), device=device, dtype=dtype))
    return flops // 2


def _on_shortcut(name: str) -> bool:
    return "downsample" in name.split(".")


def depth(model: nn.Module) -> int:
    """Weight layers on the main path: Conv2d and Linear modules, projection shortcuts excluded.

    A module inside a submodule named ``downsample`` (the 1x1 projection shortcut) does not
    count, so ResNet-56 is 56 with either shortcut option and ResNet-50 is 50. Units erased by
    Network Implosion hold no layers and so no longer count.
    """
    return sum(1 for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and not _on_shortcut(name))
