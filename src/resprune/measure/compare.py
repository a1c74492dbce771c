"""Latency truth: a pruned model against its base, by MACs and by the clock.

A MACs ratio is a promise; whether it turns into wall-clock speed depends on the runtime, the
device and the batch size. Small batches of small models are *overhead-bound*: the time goes
to per-operator dispatch and memory traffic that pruning does not reduce, so a 2x MACs cut
may give a 1.1x speed-up. :func:`compare` measures both side by side so the gap is visible.

How the clock is read (the same for every runtime):

- every model gets its own copy on the device (eager) or its own exported ONNX file, checked
  against PyTorch by :func:`resprune.export.export` before it is timed (onnxruntime);
- one seeded random input per batch size is shared by all models;
- warm-up runs, then ``repeats`` timed runs, **interleaved**: each round times base, pruned
  (and the rounded variant) one after the other, alternating the order every round, so a
  burst of load on a shared machine hits all models alike instead of one model's whole
  series; the median of each model's runs is reported;
- CUDA: ``torch.cuda.synchronize`` before and after each timed run.

:func:`round_channels` gives the "hardware-friendly widths" architecture: every channel count
rounded up to a multiple of ``N``; the timed variant is the pruned model padded to it with zero
channels (:func:`resprune.export.pad_channels`: the same logits), i.e. what
``resprune export --pad-channels N`` writes.
"""

from __future__ import annotations

import copy
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ._device import synchronize
from .counts import _input_shape, count_macs, count_params, depth
from .latency import check_timing

RUNTIMES = ("eager", "onnxruntime")
# speed-up below this fraction of the MACs ratio: the MACs saved do not show on the clock
OVERHEAD_FRACTION = 0.5


# -- rounded widths ---------------------------------------------------------------------------
def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def round_channels(spec: dict[str, Any], multiple: int) -> dict[str, Any]:
    """A copy of ``spec`` with every inner channel count rounded UP to a multiple of ``multiple``.

    Rounded: the stem width, every unit's inner widths and output width (and so the next
    unit's input). Not rounded: the image channels and the number of classes, which the data
    fixes. Bottleneck widths of a grouped conv are rounded to a multiple of
    ``lcm(multiple, groups)`` so that they stay divisible by the cardinality. A zero-padding
    shortcut keeps its channel map on the first output channels (every index stays valid,
    since input widths only grow) and gives the added output channels zero (``-1``).
    """
    if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
        raise UserError(f"channel rounding multiple must be an integer >= 1, got {multiple!r}")
    spec = copy.deepcopy(spec)
    inner = math.lcm(multiple, spec.get("groups", 1)) if spec.get("block") == "bottleneck" \
        else multiple
    spec["stem_width"] = _round_up(spec["stem_width"], multiple)
    for units in spec["stages"]:
        for u in units:
            old_out = u["out"]
            u["in"] = _round_up(u["in"], multiple)
            u["out"] = _round_up(old_out, multiple)
            if u.get("erased"):
                continue
            u["widths"] = [_round_up(w, inner) for w in u["widths"]]
            sc = u.get("shortcut")
            if isinstance(sc, dict) and "pad" in sc:
                sc["pad"] = list(sc["pad"]) + [-1] * (u["out"] - old_out)
    return spec


# -- timing -----------------------------------------------------------------------------------
def interleaved_medians(fns: Mapping[str, Callable[[], object]], warmup: int, repeats: int,
                        sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median milliseconds of each callable, timed in alternating interleaved rounds.

    ``warmup`` untimed rounds, then ``repeats`` timed rounds; each round calls every function
    once, in the given order on even rounds and reversed on odd ones. ``sync`` runs before
    and after each timed call (``torch.cuda.synchronize`` on CUDA).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync()
            t0 = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _parity_atol(model: nn.Module, shape: tuple[int, int, int]) -> float:
    """Export tolerance relative to the size of the model's outputs on the check inputs.

    The fixed default (1e-4) suits trained models, whose logits are small. Freshly initialised
    deep nets (the rounded variant) give logits in the thousands, where float32 rounding alone
    differs by ~1e-3 between runtimes; 1e-4 of the largest output is the same check for both.
    """
    from ..export.api import CHECK_BATCH_SIZES, CHECK_SEED

    gen = torch.Generator().manual_seed(CHECK_SEED)
    net = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    largest = 0.0
    with torch.no_grad():
        for b in CHECK_BATCH_SIZES:
            largest = max(largest, net(torch.randn((b, *shape), generator=gen)).abs().max().item())
    return 1e-4 * max(1.0, largest)


def _onnx_runners(models: Mapping[str, nn.Module], shape: tuple[int, int, int]
                  ) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Export each model (parity-checked) to a temporary file and open it in onnxruntime."""
    from ..export import export
    from ..export._onnx import onnx_runner

    runners = {}
    with tempfile.TemporaryDirectory(prefix="resprune-compare-") as tmp:
        for name, model in models.items():
            path = Path(tmp) / f"{name}.onnx"
            export(model, path, format="onnx", input_shape=shape, check=True,
                   atol=_parity_atol(model, shape))
            runners[name] = onnx_runner(path.read_bytes())
    return runners


def prepare(model: nn.Module, input_shape: Sequence[int], runtime: str,
            device: str = "cpu") -> Callable[[torch.Tensor], object]:
    """``model`` ready to be timed in ``runtime``, as a function of an input batch:
    ``onnxruntime`` runs the exported, parity-checked graph (CPU), ``eager`` an eval-mode copy
    on ``device`` under inference mode. Preparing once and timing many times (e.g. an input
    timed against several candidates) saves an export per timing."""
    if runtime == "onnxruntime":
        return _onnx_runners({"m": model}, _input_shape(input_shape))["m"]
    if runtime != "eager":
        raise UserError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    net = copy.deepcopy(model).to(device).eval()

    def run(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return net(x)
    return run


def _eager_rows(models: Mapping[str, nn.Module], shape: tuple[int, int, int],
                batch_sizes: Sequence[int], device: torch.device, warmup: int,
                repeats: int) -> list[dict[str, Any]]:
    nets = {name: copy.deepcopy(m).to(device).eval() for name, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for bs in batch_sizes:
            x = torch.randn((bs, *shape), generator=gen).to(device)
            fns = {name: (lambda net=net, x=x: net(x)) for name, net in nets.items()}
            ms = interleaved_medians(fns, warmup, repeats, lambda: synchronize(device))
            rows.append({"runtime": "eager", "device": device.type, "batch": bs, "ms": ms})
    return rows


def _onnx_rows(models: Mapping[str, nn.Module], shape: tuple[int, int, int],
               batch_sizes: Sequence[int], warmup: int, repeats: int) -> list[dict[str, Any]]:
    runners = _onnx_runners(models, shape)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for bs in batch_sizes:
        x = torch.randn((bs, *shape), generator=gen)
        fns = {name: (lambda run=run, x=x: run(x)) for name, run in runners.items()}
        ms = interleaved_medians(fns, warmup, repeats)
        rows.append({"runtime": "onnxruntime", "device": "cpu", "batch": bs, "ms": ms})
    return rows


def time_models(models: Mapping[str, nn.Module], input_shape: Sequence[int],
                batch_sizes: Sequence[int] = (1, 64, 256),
                runtimes: Sequence[str] = RUNTIMES, devices: Sequence[str] | None = None,
                warmup: int = 3, repeats: int = 10) -> tuple[list[dict[str, Any]], list[str]]:
    """Interleaved median latency of several models, per runtime, device and batch size.

    ``devices``: eager devices to time on; ``None`` = CPU, plus CUDA when present. The
    onnxruntime runtime always runs on CPU (its CPU execution provider) and is timed only
    when CPU is among the devices. Returns ``(rows, skipped)``: one row
    ``{"runtime", "device", "batch", "ms": {name: median_ms}}`` per combination, and a line
    per combination that could not run here (no CUDA device, onnxruntime not installed).
    """
    shape = _input_shape(input_shape)
    sizes = check_timing(batch_sizes, warmup, repeats)
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise UserError(f"unknown runtime(s) {unknown or list(runtimes)!r}; choose from "
                        f"{', '.join(RUNTIMES)}")
    skipped: list[str] = []
    if devices is None:
        devices = ["cpu", "cuda"]
    devs: list[torch.device] = []
    for d in devices:
        if d not in ("cpu", "cuda"):
            raise UserError(f"unsupported device {d!r}; use cpu or cuda")
        if d == "cuda" and not torch.cuda.is_available():
            skipped.append("eager on cuda: no CUDA device here")
            continue
        devs.append(torch.device(d))
    rows: list[dict[str, Any]] = []
    if "eager" in runtimes:
        for dev in devs:
            rows += _eager_rows(models, shape, sizes, dev, warmup, repeats)
    if "onnxruntime" in runtimes:
        if "cpu" not in [d.type for d in devs]:
            skipped.append("onnxruntime: runs on CPU only and CPU was not requested")
        elif not onnx_available():
            skipped.append("onnxruntime: not installed (pip install resprune[onnx])")
        else:
            rows += _onnx_rows(models, shape, sizes, warmup, repeats)
    return rows, skipped


# -- base vs pruned ---------------------------------------------------------------------------
def _sizes(model: nn.Module, shape: tuple[int, int, int]) -> dict[str, int]:
    return {"params": count_params(model), "macs": count_macs(model, shape),
            "depth": depth(model)}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def note_for(speedup: float | None, macs_ratio: float | None, batch: int) -> str:
    """How to read one speed-up against the MACs ratio ('' when the MACs saved show).

    ``overhead-bound at batch N`` when the speed-up is below ``OVERHEAD_FRACTION`` times the
    MACs ratio; ``pruned is slower`` when the pruned model takes longer than the base.
    """
    if speedup is None or macs_ratio is None:
        return ""
    notes = []
    if speedup < OVERHEAD_FRACTION * macs_ratio:
        notes.append(f"overhead-bound at batch {batch}")
    if speedup < 1 <= macs_ratio:
        notes.append("pruned is slower")
    return "; ".join(notes)


def compare(base: nn.Module, pruned: nn.Module, input_shape: Sequence[int],
            batch_sizes: Sequence[int] = (1, 64, 256), runtimes: Sequence[str] = RUNTIMES,
            devices: Sequence[str] | None = None, warmup: int = 3, repeats: int = 10,
            round_to: int | None = None) -> dict[str, Any]:
    """Params, MACs and measured speed-up of ``pruned`` over ``base``, side by side.

    Returns ``{"input_shape", "threads", "warmup", "repeats", "base", "pruned",
    ["rounded",] "params_ratio", "macs_ratio", "latency", "skipped"}`` where ``base`` /
    ``pruned`` / ``rounded`` hold ``params``, ``macs`` and ``depth``; ratios are
    base / pruned (``macs_ratio`` is exactly ``count_macs(base) / count_macs(pruned)``);
    ``latency`` lists one row per runtime, device and batch size with ``base_ms``,
    ``pruned_ms``, ``speedup`` (base_ms / pruned_ms) and ``note`` (see :func:`note_for`),
    plus ``rounded_ms`` and ``rounded_speedup`` (base_ms / rounded_ms) when ``round_to`` is
    given: the pruned architecture with every channel count rounded up to a multiple of
    ``round_to`` (:func:`round_channels`). Neither model is modified.
    """
    shape = _input_shape(input_shape)
    models: dict[str, nn.Module] = {"base": base, "pruned": pruned}
    if round_to is not None:
        from ..export.pad import pad_channels

        models["rounded"] = pad_channels(pruned, round_to)
    sizes = {name: _sizes(m, shape) for name, m in models.items()}
    macs_ratio = _ratio(sizes["base"]["macs"], sizes["pruned"]["macs"])
    rows, skipped = time_models(models, shape, batch_sizes, runtimes, devices, warmup, repeats)
    latency = []
    for row in rows:
        ms = row["ms"]
        speedup = _ratio(ms["base"], ms["pruned"])
        out = {"runtime": row["runtime"], "device": row["device"], "batch": row["batch"],
               "base_ms": ms["base"], "pruned_ms": ms["pruned"], "speedup": speedup}
        if "rounded" in ms:
            out["rounded_ms"] = ms["rounded"]
            out["rounded_speedup"] = _ratio(ms["base"], ms["rounded"])
        out["note"] = note_for(speedup, macs_ratio, row["batch"])
        latency.append(out)
    result: dict[str, Any] = {
        "input_shape": list(shape), "threads": torch.get_num_threads(),
        "warmup": warmup, "repeats": repeats, **sizes,
        "params_ratio": _ratio(sizes["base"]["params"], sizes["pruned"]["params"]),
        "macs_ratio": macs_ratio, "latency": latency, "skipped": skipped}
    if round_to is not None:
        result["rounded"] = {"round_to": round_to, **sizes["rounded"]}
    return result


def verdict(result: dict[str, Any]) -> list[str]:
    """Plain-language lines summarising where the MACs saved show on the clock."""
    ratio = result.get("macs_ratio")
    rows = [r for r in result["latency"] if r.get("speedup") is not None]
    if ratio is None or not rows:
        return []
    best = max(rows, key=lambda r: r["speedup"])
    lines = [f"MACs ratio {ratio:.2f}x; best measured speed-up {best['speedup']:.2f}x "
             f"({best['runtime']} on {best['device']}, batch {best['batch']})."]
    bound = [f"{r['runtime']}/{r['device']} batch {r['batch']}" for r in rows
             if r["note"].startswith("overhead-bound")]
    slower = [f"{r['runtime']}/{r['device']} batch {r['batch']}" for r in rows
              if "pruned is slower" in r["note"]]
    if bound:
        lines.append(f"Overhead-bound (speed-up < {OVERHEAD_FRACTION:g} x MACs ratio): "
                     + ", ".join(bound) + ". Fewer MACs do not pay off there; larger batches "
                     "or another runtime may.")
    if slower:
        lines.append("Pruned model slower than the base: " + ", ".join(slower) + ".")
    if "rounded" in result:
        n = result["rounded"]["round_to"]
        faster = [r for r in rows if r.get("rounded_ms") is not None
                  and r["rounded_ms"] < r["pruned_ms"]]
        lines.append(f"Widths rounded up to multiples of {n}: faster than the exact widths in "
                     f"{len(faster)} of {len(rows)} settings"
                     + (" (" + ", ".join(f"{r['runtime']}/{r['device']} batch {r['batch']}"
                                        for r in faster) + ")." if faster else "."))
    return lines
