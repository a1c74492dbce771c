"""Where the time goes: MACs and measured time per kind of layer, in eager and onnxruntime.

:func:`layer_profile` times one batch size, on the CPU:

- **eager**: forward pre/post hooks on every leaf module add up the wall time spent inside
  convolutions, BatchNorms, ReLUs, shortcuts (zero padding), pooling and the classifier;
  ``add`` is what the forward pass takes outside all leaf modules (the residual additions,
  flattening, Python glue), i.e. the measured whole pass minus the leaves. The hooks cost a
  little themselves, so the whole pass is timed again without them (``total_ms``);
- **onnxruntime**: the exported graph (the same one ``resprune export`` writes, checked
  against PyTorch) runs with onnxruntime's profiler, whose per-node kernel times are summed
  by operator. onnxruntime fuses operators (a convolution with its ReLU and the residual
  addition becomes one ``FusedConv``; BatchNorms are folded by the exporter) and on x86 wraps
  convolutions in layout reorders to blocks of 8 or 16 channels (``layout``), so its kinds
  differ from eager's: that difference is the point.

Times are per batch (median over repeats for the totals, mean per kind); MACs are those of
:func:`resprune.measure.count_macs` for the whole batch, split by layer.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..models import PadShortcut

KINDS = ("conv", "bn", "relu", "add", "pad", "pool", "fc", "layout", "other")
ORT_KINDS = {"Conv": "conv", "FusedConv": "conv", "NchwcConv": "conv",
             "BatchNormalization": "bn", "Relu": "relu", "Add": "add", "Sum": "add",
             "Gather": "pad", "Concat": "pad", "Slice": "pad", "ConstantOfShape": "pad",
             "Shape": "pad", "Pad": "pad", "ReduceMean": "pool", "GlobalAveragePool": "pool",
             "AveragePool": "pool", "MaxPool": "pool", "NchwcMaxPool": "pool", "Gemm": "fc",
             "MatMul": "fc", "ReorderInput": "layout", "ReorderOutput": "layout",
             "Reshape": "other", "Flatten": "other", "Mul": "other"}


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "bn"
    if isinstance(m, (nn.ReLU, nn.ReLU6)):
        return "relu"
    if isinstance(m, PadShortcut):
        return "pad"
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d)):
        return "pool"
    if isinstance(m, nn.Linear):
        return "fc"
    return None


def _macs_by_kind(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    macs: dict[str, int] = defaultdict(int)

    def hook(m, inp, out):
        if isinstance(m, nn.modules.conv._ConvNd):
            k = m.in_channels // m.groups
            for s in m.kernel_size:
                k *= s
            macs["conv"] += out.numel() * k
        elif isinstance(m, nn.Linear):
            macs["fc"] += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return dict(macs)


def _eager(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> dict[str, Any]:
    spent: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}

    def pre(m, inp):
        starts[id(m)] = time.perf_counter()

    def post(m, inp, out):
        spent[_kind(m)] += time.perf_counter() - starts.pop(id(m))

    leaves = [m for m in model.modules() if _kind(m) is not None]
    totals, hooked = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):  # the whole pass without hooks
            t0 = time.perf_counter()
            model(x)
            totals.append(time.perf_counter() - t0)
        handles = [m.register_forward_pre_hook(pre) for m in leaves]
        handles += [m.register_forward_hook(post) for m in leaves]
        try:
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                hooked.append(time.perf_counter() - t0)
        finally:
            for h in handles:
                h.remove()
    per = {k: 1e3 * v / repeats for k, v in spent.items()}
    per["add"] = max(0.0, 1e3 * sum(hooked) / repeats - sum(per.values()))
    return {"total_ms": 1e3 * statistics.median(totals), "by_kind_ms": per,
            "hooked_total_ms": 1e3 * statistics.median(hooked)}


def _onnxruntime(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int
                 ) -> dict[str, Any]:
    import onnxruntime as ort

    from ..export._onnx import session_options, to_onnx_bytes

    data = to_onnx_bytes(model, tuple(x.shape[1:]), 18)
    arr = x.numpy()
    session = ort.InferenceSession(data, session_options(),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: arr})
    totals = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {name: arr})
        totals.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options()
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        prof = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        for _ in range(warmup + repeats):
            prof.run(None, {name: arr})
        path = prof.end_profiling()
        events = json.loads(open(path).read())
    by_op: dict[str, float] = defaultdict(float)
    runs_seen = warmup + repeats
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            by_op[e.get("args", {}).get("op_name", "?")] += e.get("dur", 0) / 1e3
    per_kind: dict[str, float] = defaultdict(float)
    for op, ms in by_op.items():
        per_kind[ORT_KINDS.get(op, "other")] += ms / runs_seen
    return {"total_ms": 1e3 * statistics.median(totals), "by_kind_ms": dict(per_kind),
            "by_op_ms": {op: ms / runs_seen for op, ms in sorted(by_op.items())}}


def layer_profile(model: nn.Module, input_shape: Sequence[int], batch: int = 64,
                  warmup: int = 2, repeats: int = 5,
                  runtimes: Sequence[str] = ("eager", "onnxruntime")) -> dict[str, Any]:
    """MACs and time per kind of layer (module docstring) for one batch of ``batch``."""
    from .compare import onnx_available

    net = model.to("cpu").eval()
    x = torch.randn((batch, *input_shape), generator=torch.Generator().manual_seed(0))
    out: dict[str, Any] = {"batch": batch, "threads": torch.get_num_threads(),
                           "repeats": repeats, "macs": _macs_by_kind(net, x), "runtimes": {},
                           "skipped": []}
    if "eager" in runtimes:
        out["runtimes"]["eager"] = _eager(net, x, warmup, repeats)
    if "onnxruntime" in runtimes:
        if onnx_available():
            out["runtimes"]["onnxruntime"] = _onnxruntime(net, x, warmup, repeats)
        else:
            out["skipped"].append("onnxruntime: not installed (pip install resprune[onnx])")
    return out
