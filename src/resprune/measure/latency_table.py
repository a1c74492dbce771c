"""Per-layer latency tables: the measured time of every convolution of a model as a function of
the channels it keeps, on the runtime the model will be deployed to.

A convolution's *shape* is everything but its channel counts (kernel, stride, padding,
groups, input height and width); layers of the same shape (e.g. the 17 inner convolutions of
a ResNet-56 stage) share one entry. For each shape the table times, on random inputs of one
batch size with the current thread count, a convolution followed by a ReLU (onnxruntime fuses
the two; BN is folded into the convolution for deployment):

- ``out[c]``: ``c`` output channels, all input channels;
- ``in[c]``: all output channels, ``c`` input channels;

in eager PyTorch on the CPU (``eager``), in onnxruntime's CPU provider (``onnxruntime``) or in
PyTorch on a CUDA device (``cuda``, synchronised around each run);

for every ``c`` up to 64 and on a coarser grid above (linear in between), and predicts a
pruned convolution as ``full * (out[c_out] / full) * (in[c_in] / full)`` (separable). Curves
are made non-decreasing (timing noise only lowers a point to the next one's time). The
staircases these curves show (onnxruntime computes in blocks of 8 or 16 channels on x86) are
what :func:`auto_multiple` reads for ``round_to="auto"``.

Tables are cached as JSON under the cache directory (``$RESPRUNE_CACHE_DIR`` or
``~/.cache/resprune``), keyed by runtime, batch, threads, the CPU, the torch (and onnxruntime)
version, the input shape and every conv (name and shape: the whole model's time depends on
all of them); a cached table is reused without timing anything.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..io import atomic_write_json, read_json

RUNTIMES = ("eager", "onnxruntime", "cuda")
COSTS = ("none", "params", "macs", "latency")  # what a unit saves, for ranking by score per it
RUNTIME_HELP = ("where the per-layer latency table is measured: eager (PyTorch, CPU), "
                "onnxruntime (CPU) or cuda (PyTorch on the GPU); with the current thread count")
BATCH_HELP = "batch size of the latency table"
TABLE_FORMAT = 1
FINE = 64  # every channel count up to this is timed


@dataclass(frozen=True)
class ConvShape:
    """A convolution without its channel counts, plus its full widths."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    height: int
    width: int

    def key(self) -> str:
        return (f"{self.in_channels}x{self.out_channels}_k{self.kernel[0]}x{self.kernel[1]}"
                f"_s{self.stride[0]}_p{self.padding[0]}_g{self.groups}_{self.height}x"
                f"{self.width}")


def conv_shapes(model: nn.Module, input_shape: Sequence[int]) -> dict[str, ConvShape]:
    """The :class:`ConvShape` of every 2-D convolution of ``model`` (by module name)."""
    found: dict[str, ConvShape] = {}
    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    def hook(m: nn.Conv2d, inp: Any, _out: Any) -> None:
        h, w = inp[0].shape[-2:]
        found[names[m]] = ConvShape(m.in_channels, m.out_channels, tuple(m.kernel_size),
                                    tuple(m.stride), tuple(m.padding), m.groups, int(h), int(w))

    handles = [m.register_forward_hook(hook) for m in names]
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return found


def grid(n: int) -> list[int]:
    """The channel counts timed for a side of ``n`` channels."""
    step = 8 if n <= 512 else 32
    return sorted(set(range(1, min(n, FINE) + 1)) | set(range(FINE, n + 1, step)) | {n})


def _eager_timer(batch: int, warmup: int, repeats: int, device: str = "cpu"):
    from ._device import synchronize

    dev = torch.device(device)

    def time_conv(s: ConvShape, cin: int, cout: int) -> float:
        groups = s.groups if cin % s.groups == 0 and cout % s.groups == 0 else 1
        net = nn.Sequential(nn.Conv2d(cin, cout, s.kernel, s.stride, s.padding, groups=groups),
                            nn.ReLU()).eval().to(dev)
        x = torch.randn(batch, cin, s.height, s.width, device=dev)
        with torch.inference_mode():
            for _ in range(warmup):
                net(x)
            times = []
            for _ in range(repeats):
                synchronize(dev)
                t0 = time.perf_counter()
                net(x)
                synchronize(dev)
                times.append(time.perf_counter() - t0)
        return 1e3 * min(times)
    return time_conv


def _ort_timer(batch: int, warmup: int, repeats: int):
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from ..export._onnx import session_options

    def time_conv(s: ConvShape, cin: int, cout: int) -> float:
        groups = s.groups if cin % s.groups == 0 and cout % s.groups == 0 else 1
        rng = np.random.default_rng(0)
        w = rng.standard_normal((cout, cin // groups, *s.kernel)).astype(np.float32)
        b = np.zeros(cout, np.float32)
        conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=groups,
                                kernel_shape=list(s.kernel), strides=list(s.stride),
                                pads=[s.padding[0], s.padding[1]] * 2)
        relu = helper.make_node("Relu", ["y"], ["z"])
        graph = helper.make_graph(
            [conv, relu], "conv",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                           [batch, cin, s.height, s.width])],
            [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                                  ir_version=9)
        sess = ort.InferenceSession(model.SerializeToString(), session_options(),
                                    providers=["CPUExecutionProvider"])
        x = rng.standard_normal((batch, cin, s.height, s.width)).astype(np.float32)
        for _ in range(warmup):
            sess.run(None, {"x": x})
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(None, {"x": x})
            times.append(time.perf_counter() - t0)
        return 1e3 * min(times)
    return time_conv


def _model_ms(model: nn.Module, input_shape: Sequence[int], runtime: str, batch: int,
              repeats: int) -> float:
    """The whole model's time in ``runtime`` (fastest of ``repeats`` after one warm-up)."""
    import copy

    from .compare import time_models

    net = copy.deepcopy(model).to("cpu").eval()
    rows, _ = time_models({"m": net}, input_shape, batch_sizes=(batch,), warmup=1,
                          repeats=repeats, runtimes=("eager" if runtime == "cuda" else runtime,),
                          devices=["cuda" if runtime == "cuda" else "cpu"])
    return float(rows[0]["ms"]["m"])


def _monotone(values: list[float]) -> list[float]:
    out = list(values)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return out


def _interp(points: list[int], values: list[float], c: int) -> float:
    if c <= points[0]:
        return values[0] * c / points[0] if c > 0 else 0.0
    for (a, va), (b, vb) in zip(zip(points, values), zip(points[1:], values[1:])):
        if a <= c <= b:
            return va + (vb - va) * (c - a) / (b - a)
    return values[-1]


class LatencyTable:
    """Measured conv latencies per :class:`ConvShape` (module docstring)."""

    def __init__(self, runtime: str, batch: int, threads: int,
                 curves: dict[str, dict[str, Any]], machine: dict[str, Any], model_ms: float):
        self.runtime, self.batch, self.threads = runtime, batch, threads
        self.curves, self.machine, self.model_ms = curves, machine, model_ms

    def conv_ms(self, shape: ConvShape, cin: int, cout: int) -> float:
        """Predicted time (ms per batch) of a conv of ``shape`` keeping ``cin`` -> ``cout``."""
        if cin <= 0 or cout <= 0:
            return 0.0
        c = self.curves[shape.key()]
        full = c["full_ms"]
        if full <= 0:
            return 0.0
        a = _interp(c["out_points"], c["out_ms"], cout) / full
        b = _interp(c["in_points"], c["in_ms"], cin) / full
        return full * a * b

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "runtime": self.runtime, "batch": self.batch,
                "threads": self.threads, "machine": self.machine, "model_ms": self.model_ms,
                "curves": self.curves}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyTable:
        return cls(d["runtime"], d["batch"], d["threads"], d["curves"], d["machine"],
                   d["model_ms"])


def _machine(runtime: str) -> dict[str, Any]:
    info = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(
                "model name")), None)
        if model:
            info["cpu"] = model
    except OSError:
        pass
    if runtime == "onnxruntime":
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


def measure_table(model: nn.Module, input_shape: Sequence[int], runtime: str = "eager",
                  batch: int = 64, warmup: int = 1, repeats: int = 5,
                  cache_dir: str | Path | None = None, progress=None) -> LatencyTable:
    """Time (or read from the cache) the latency table of ``model``'s convolutions.

    ``runtime``: ``eager`` (PyTorch on the CPU) or ``onnxruntime`` (CPU provider); the batch
    and the current torch thread count are part of the table (and of its cache key).
    ``cache_dir=None``: the resprune cache directory; ``progress(i, n)`` is called per shape.
    """
    if runtime not in RUNTIMES:
        raise UserError(f"unknown latency runtime {runtime!r}; choose one of: "
                        f"{', '.join(RUNTIMES)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UserError(f"latency batch must be an integer >= 1, got {batch!r}")
    if runtime == "cuda" and not torch.cuda.is_available():
        raise UserError("the cuda latency table needs a CUDA device; none is available here "
                        "(use eager or onnxruntime)")
    if runtime == "onnxruntime":
        from .compare import onnx_available

        if not onnx_available():
            raise UserError("the onnxruntime latency table needs onnxruntime: pip install "
                            "'resprune[onnx]' (or use the eager table)")
    every = conv_shapes(model, input_shape)
    shapes = sorted({s.key(): s for s in every.values()}.items())
    machine = _machine(runtime)
    # the whole model's time is part of the table: the key holds every conv, not just shapes
    layers = sorted((n, s.key()) for n, s in every.items())
    key = hashlib.sha256(json.dumps([runtime, batch, machine, layers, list(input_shape)],
                                    sort_keys=True).encode()).hexdigest()[:16]
    if cache_dir is None:
        from ..data.smallimages import default_cache_dir

        cache_dir = default_cache_dir()
    path = Path(cache_dir) / "latency" / f"{runtime}-b{batch}-{key}.json"
    if path.is_file():
        try:
            d = read_json(path)
            if d.get("format") == TABLE_FORMAT:
                return LatencyTable.from_dict(d)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is measured again
    timer = (_ort_timer(batch, warmup, repeats) if runtime == "onnxruntime" else
             _eager_timer(batch, warmup, repeats, "cuda" if runtime == "cuda" else "cpu"))
    curves = {}
    for i, (k, s) in enumerate(shapes):
        outs, ins = grid(s.out_channels), grid(s.in_channels)
        out_ms = _monotone([timer(s, s.in_channels, c) for c in outs])
        in_ms = _monotone([timer(s, c, s.out_channels) for c in ins])
        full = min(out_ms[-1], in_ms[-1])  # the same conv, timed twice
        out_ms, in_ms = _monotone(out_ms[:-1] + [full]), _monotone(in_ms[:-1] + [full])
        curves[k] = {"shape": asdict(s), "full_ms": full, "out_points": outs, "out_ms": out_ms,
                     "in_points": ins, "in_ms": in_ms}
        if progress is not None:
            progress(i + 1, len(shapes))
    table = LatencyTable(runtime, batch, torch.get_num_threads(), curves, machine,
                         _model_ms(model, input_shape, runtime, batch, repeats))
    atomic_write_json(path, table.to_dict(), collective=False)  # a cache: whoever measured
    return LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))  # as when cached


RUN_TABLE = "latency_table.json"


def run_table(run_dir: str | Path, model: nn.Module, input_shape: Sequence[int], runtime: str,
              batch: int) -> LatencyTable:
    """The table a run decides with: ``RUN_DIR/latency_table.json`` when the run has one
    (a resumed run keeps its numbers), else measured (or read from the cache) and kept there.

    Under torchrun rank 0 alone measures (the others would disturb and could differ) and
    every process decides with its table."""
    import logging

    from .. import distributed

    path = Path(run_dir) / RUN_TABLE
    if path.is_file():
        return LatencyTable.from_dict(read_json(path))
    logging.getLogger("resprune").info("measuring the %s latency table (batch %d, %d "
                                       "thread(s))", runtime, batch, torch.get_num_threads())
    data = distributed.main_decides(
        lambda: measure_table(model, input_shape, runtime, batch=batch).to_dict())
    atomic_write_json(path, data)
    return LatencyTable.from_dict(data)


def unit_latency(table: LatencyTable, model: nn.Module, input_shape: Sequence[int],
                 units: Sequence[str]) -> dict[str, float]:
    """Predicted time of each unit's convolutions at their full widths (ms per batch)."""
    shapes = conv_shapes(model, input_shape)
    return {u: sum(table.conv_ms(s, s.in_channels, s.out_channels) for n, s in shapes.items()
                   if n.startswith(u + ".")) for u in units}


def _boundary_share(table: LatencyTable, m: int, min_channels: int) -> float | None:
    """The share of the output curves' rise (over their fine part, channels up to ``FINE``)
    that happens where the channel count crosses a multiple of ``m`` (from ``k m`` to
    ``k m + 1``), pooled over the curves of at least ``min_channels`` channels; ``None``
    when those curves do not rise."""
    rise = at_steps = 0.0
    for c in table.curves.values():
        pts, ms = c["out_points"], c["out_ms"]
        if pts[-1] < min_channels:
            continue
        for (a, ma), (b, mb) in zip(zip(pts, ms), zip(pts[1:], ms[1:])):
            if b > FINE or b != a + 1:
                break
            rise += mb - ma
            at_steps += (mb - ma) * (a % m == 0)
    return at_steps / rise if rise > 0 else None


def auto_multiple(table: LatencyTable, candidates: Sequence[int] = (16, 8, 4, 2),
                  keep: float = 0.7, lift: float = 3.0) -> int:
    """The channel step the table's curves show: the largest candidate ``m`` such that

    - crossing multiples of ``m`` carries at least ``lift`` times the share of the output
      curves' rise that growth spread evenly over the channels would put there (``1 / m``),
    - and at least ``keep`` of the share that multiples of ``m / 2`` carry (a staircase of
      ``m`` puts all of its rise at multiples of ``m``; one of ``m / 2`` only half),

    pooled over the output curves of at least ``2 m`` channels (:func:`_boundary_share`);
    1 when none does (time grows with every channel). Pooling the rise makes the reading
    robust to single noisy points, which a per-point rule is not: on the noisy one-thread
    onnxruntime table of ResNet-56 (``tests/fixtures/latency_table_r56_ort.json``) a
    per-point rule read 4 where the runtime computes in blocks of 8."""
    for m in sorted(candidates, reverse=True):
        share = _boundary_share(table, m, 2 * m)
        half = 1.0 if m // 2 <= 1 else _boundary_share(table, m // 2, 2 * m)
        if share is None or not half:
            continue
        if share >= lift / m and share >= keep * half:
            return m
    return 1
