"""Inference latency: median wall time of repeated forward passes after warm-up."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ._device import autocast, check_precision, resolve_device, synchronize
from .counts import _input_shape


def check_timing(batch_sizes: Sequence[int], warmup: int, repeats: int) -> list[int]:
    """Validate timing options (UserError naming the bad one); return the batch sizes."""
    sizes = list(batch_sizes)
    if not sizes or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0
                            for b in sizes):
        raise UserError(f"latency batch sizes must be positive integers, got {sizes!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise UserError(f"latency warm-up runs must be an integer >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"latency repeats must be an integer >= 1, got {repeats!r}")
    return sizes


def latency(model: nn.Module, input_shape: Sequence[int],
            batch_sizes: Sequence[int] = (1, 64, 256), device: str | torch.device = "cpu",
            warmup: int = 3, repeats: int = 10,
            precision: str = "fp32") -> dict[int, dict[str, Any]]:
    """Time forward passes of ``model`` on random ``(bs, C, H, W)`` inputs.

    For each batch size: ``warmup`` untimed runs, then ``repeats`` timed runs under
    ``torch.inference_mode`` in eval mode (``torch.cuda.synchronize`` before and after each
    timed run on CUDA). Returns ``{bs: {"median_ms", "images_per_s", "repeats"}}`` from the
    median run. The model is timed on a copy moved to ``device``; the caller's model is left
    as it was (device and mode).
    """
    shape = _input_shape(input_shape)
    dev = resolve_device(device)
    check_precision(precision)
    sizes = check_timing(batch_sizes, warmup, repeats)
    net = copy.deepcopy(model).to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    out: dict[int, dict[str, Any]] = {}
    with torch.inference_mode():
        for bs in sizes:
            x = torch.randn((bs, *shape), generator=gen).to(dev)
            for _ in range(warmup):
                with autocast(dev, precision):
                    net(x)
            times = []
            for _ in range(repeats):
                synchronize(dev)
                t0 = time.perf_counter()
                with autocast(dev, precision):
                    net(x)
                synchronize(dev)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            out[bs] = {"median_ms": med * 1e3, "images_per_s": bs / med if med > 0 else
                       float("inf"), "repeats": repeats}
    return out
