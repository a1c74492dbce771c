"""The one measurement every command, the demo and the benchmarks report for a model.

:func:`measure_model` = :func:`~resprune.measure.profile` (params, MACs, depth, CPU latency) +
top-1 on each split it is given. :func:`sizes` is its cheap part (no timing, no data), for
decisions taken in a loop (implosion steps, compress's budget split).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .accuracy import evaluate
from .profile import profile

#: batch sizes of the CPU latency in every summary.json
SUMMARY_BATCH_SIZES = (1, 64)


def sizes(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """``{"params", "macs", "depth"}`` of ``model`` (MACs for one ``[C, H, W]`` input)."""
    p = profile(model, input_shape, latency_batch_sizes=())
    return {"params": int(p["params"]), "macs": int(p["macs"]), "depth": int(p["depth"])}


def accuracy(model: nn.Module, loaders: Mapping[str, Any] | None,
             precision: str = "fp32") -> dict[str, Any]:
    """``top1`` / ``top5`` (split ``test``) and ``<split>_top1`` (e.g. ``val_top1``) of every
    loader given; ``None`` for a missing or empty one."""
    out: dict[str, Any] = {}
    for split, loader in (loaders or {}).items():
        key = "top1" if split == "test" else f"{split}_top1"
        if loader is None or getattr(loader, "num_samples", 1) == 0:
            out[key] = None
            if split == "test":
                out["top5"] = None
            continue
        r = evaluate(model, loader, precision=precision)
        out[key] = r["top1"]
        if split == "test":
            out["top5"] = r["top5"]
    return out


def measure_model(model: nn.Module, input_shape: Sequence[int],
                  loaders: Mapping[str, Any] | None = None, *,
                  device: torch.device | str = "cpu", precision: str = "fp32",
                  latency_batch_sizes: Sequence[int] = SUMMARY_BATCH_SIZES) -> dict[str, Any]:
    """params, MACs, depth, median CPU latency per batch size (``cpu_latency_ms``, ms, keys
    as strings) and, for each loader in ``loaders`` (``{"val": ..., "test": ...}``), top-1.

    Latency is timed on the CPU (the deployment target resprune reports by default); the model
    is moved back to ``device`` for the accuracies. For a before/after latency comparison use
    :func:`resprune.measure.compare.compare`, which times both models interleaved.
    """
    model.eval()
    p = profile(model, tuple(input_shape), latency_batch_sizes=tuple(latency_batch_sizes),
                device="cpu")
    out: dict[str, Any] = {"params": int(p["params"]), "macs": int(p["macs"]),
                           "depth": int(p["depth"]),
                           "cpu_latency_ms": {str(bs): round(v["median_ms"], 4)
                                              for bs, v in p["latency"].items()}}
    model.to(device)
    out.update(accuracy(model, loaders, precision))
    return out
