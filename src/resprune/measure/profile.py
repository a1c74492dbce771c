"""One dictionary describing a model's size and speed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .counts import _input_shape, count_macs, count_params, depth
from .latency import latency


def profile(model: nn.Module, input_shape: Sequence[int],
            latency_batch_sizes: Sequence[int] = (1, 64, 256),
            device: str | torch.device = "cpu", warmup: int = 3, repeats: int = 10,
            precision: str = "fp32") -> dict[str, Any]:
    """``{"params", "macs", "depth", "input_shape", "latency"}`` of ``model``.

    ``latency`` is the :func:`~resprune.measure.latency` result (``{}`` when
    ``latency_batch_sizes`` is empty, to skip the timing).
    """
    shape = _input_shape(input_shape)
    result: dict[str, Any] = {
        "params": count_params(model),
        "macs": count_macs(model, shape),
        "depth": depth(model),
        "input_shape": list(shape),
        "latency": {},
    }
    if len(latency_batch_sizes) > 0:
        result["latency"] = latency(model, shape, latency_batch_sizes, device=device,
                                    warmup=warmup, repeats=repeats, precision=precision)
    return result
