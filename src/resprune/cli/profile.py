"""``resprune profile``: params, MACs, depth and measured latency of a run.

With ``--compare BASE_RUN`` it puts the run (the pruned model) next to its base: MACs ratio
and measured speed-up per runtime (PyTorch eager, onnxruntime) and batch size, with a note
wherever the MACs saved do not show on the clock (see :mod:`resprune.measure.compare`).
``--round-to N`` also times the run padded with zero channels to every channel count a
multiple of N (the same logits; ``resprune export --pad-channels N``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..checkpoint import ARCH_FILE, load, load_spec
from ..errors import UserError
from ..report import fmt_count, fmt_ms, text_table
from ..runs import input_shape_of
from . import options


def add_parser(subs) -> None:
    from ..measure.compare import RUNTIMES

    p = subs.add_parser(
        "profile", help="params, MACs, depth and latency of a run (or vs. a base run)",
        description="Count params and MACs (multiply-accumulates of conv and linear layers, "
                    "PyTorch's FLOP counter / 2), depth (weight layers on the main path) and "
                    "measure latency as the median of repeated timed runs after warm-up. "
                    "--compare BASE_RUN shows MACs ratio and measured speed-up of RUN over "
                    "BASE_RUN side by side (interleaved timing, PyTorch eager and onnxruntime, "
                    "CPU and CUDA when present).")
    p.add_argument("run", metavar="RUN", help="run directory (with --compare: the pruned run)")
    p.add_argument("--compare", metavar="BASE_RUN",
                   help="base run directory to compare RUN against")
    p.add_argument("--round-to", type=options.positive_int, metavar="N",
                   help="also time RUN padded to every channel count a multiple of N (zero "
                        "channels, the same logits: what resprune export --pad-channels N "
                        "writes)")
    p.add_argument("--batch-sizes", type=options.positive_int, nargs="+", default=[1, 64, 256],
                   help="latency batch sizes (1 64 256)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="device to time on (default cpu; with --compare: cpu, and cuda when "
                        "present)")
    p.add_argument("--runtimes", choices=RUNTIMES, nargs="+", default=list(RUNTIMES),
                   help="with --compare: runtimes to time (eager onnxruntime; onnxruntime is "
                        "skipped when not installed)")
    p.add_argument("--threads", type=options.positive_int, metavar="N",
                   help="CPU threads for torch and onnxruntime (default: torch's default)")
    p.add_argument("--warmup", type=options.nonneg_int, default=3,
                   help="untimed runs before timing (3)")
    p.add_argument("--repeats", type=options.positive_int, default=10,
                   help="timed runs per model and batch size (10); lower it for large models "
                        "at batch 256")
    p.add_argument("--layers", type=options.positive_int, nargs="?", const=64,
                   metavar="BATCH",
                   help="where the time goes instead: MACs and measured time per kind of "
                        "layer (conv, BN, ReLU, add, pad, pool, fc; onnxruntime's layout "
                        "reorders) in eager and onnxruntime at one batch size (default 64), "
                        "for RUN and, with --compare, BASE_RUN side by side")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    options.add_config(p)
    p.set_defaults(func=run)


def _run_dir(path: str, what: str) -> Path:
    """A run directory with a model, or a one-line UserError naming ``what``."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{what} {p} is not a directory; pass a run directory written by "
                        "a resprune command")
    if not (p / ARCH_FILE).is_file():
        raise UserError(f"{what} {p} is not a resprune run directory (no {ARCH_FILE})")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.layers is not None:
            return _layers(args)
        if args.compare is not None:
            return _compare(args)
        return _single(args)
    finally:
        torch.set_num_threads(threads)


def _single(args: argparse.Namespace) -> int:
    from ..export.pad import pad_channels
    from ..measure import count_macs, count_params, depth, latency
    from ..measure.compare import time_models
    from .common import emit, resolve_device

    run_dir = _run_dir(args.run, "RUN")
    spec = load_spec(run_dir)
    device = resolve_device(args.device or "cpu")
    model = load(run_dir).eval()
    shape = tuple(input_shape_of(run_dir, spec))
    result: dict[str, Any] = {
        "run": str(args.run), "model": spec["arch"], "input_shape": list(shape),
        "params": count_params(model), "macs": count_macs(model, shape),
        "depth": depth(model), "device": str(device)}
    if args.round_to is None:
        lat = latency(model, shape, batch_sizes=tuple(args.batch_sizes), device=str(device),
                      warmup=args.warmup, repeats=args.repeats)
        rounded_ms: dict[int, float] = {}
    else:  # time both interleaved, so the comparison survives a noisy machine
        rounded = pad_channels(model, args.round_to)
        rows, _ = time_models({"model": model, "rounded": rounded}, shape, args.batch_sizes,
                              runtimes=("eager",), devices=[device.type],
                              warmup=args.warmup, repeats=args.repeats)
        lat = {r["batch"]: {"median_ms": r["ms"]["model"],
                            "images_per_s": r["batch"] / r["ms"]["model"] * 1e3,
                            "repeats": args.repeats} for r in rows}
        rounded_ms = {r["batch"]: r["ms"]["rounded"] for r in rows}
        result["rounded"] = {"round_to": args.round_to, "params": count_params(rounded),
                             "macs": count_macs(rounded, shape), "depth": depth(rounded),
                             "latency_ms": {str(bs): v for bs, v in rounded_ms.items()}}
    result["latency"] = {str(bs): v for bs, v in lat.items()}
    headers = [f"latency ({device})", "median", "images/s"]
    if rounded_ms:
        headers += [f"rounded to {args.round_to}", "rounded / exact"]
    rows_out = []
    for bs, v in lat.items():
        row = [f"batch {bs}", fmt_ms(v["median_ms"]), f"{v['images_per_s']:.1f}"]
        if rounded_ms:
            row += [fmt_ms(rounded_ms[bs]), f"{rounded_ms[bs] / v['median_ms']:.2f}"]
        rows_out.append(row)
    text = (f"{args.run}: {spec['arch']}, input {list(shape)}\n"
            f"params {fmt_count(result['params'])}, MACs {fmt_count(result['macs'])}, "
            f"depth {result['depth']} weight layers\n")
    if "rounded" in result:
        r = result["rounded"]
        text += (f"rounded to multiples of {args.round_to}: params {fmt_count(r['params'])}, "
                 f"MACs {fmt_count(r['macs'])}\n")
    emit(args, result, text + text_table(headers, rows_out))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from ..measure.compare import compare
    from .common import emit, resolve_device

    run_dir = _run_dir(args.run, "RUN")
    base_dir = _run_dir(args.compare, "--compare")
    spec, base_spec = load_spec(run_dir), load_spec(base_dir)
    shape = input_shape_of(run_dir, spec)
    base_shape = input_shape_of(base_dir, base_spec)
    if shape != base_shape:
        raise UserError(f"{run_dir} takes inputs {shape} but --compare {base_dir} takes "
                        f"{base_shape}; compare runs of the same data")
    devices = None if args.device is None else [resolve_device(args.device).type]
    result = compare(load(base_dir).eval(), load(run_dir).eval(), shape,
                     batch_sizes=args.batch_sizes, runtimes=args.runtimes, devices=devices,
                     warmup=args.warmup, repeats=args.repeats, round_to=args.round_to)
    result["base"] = {"run": str(base_dir), "model": base_spec["arch"], **result["base"]}
    result["pruned"] = {"run": str(run_dir), "model": spec["arch"], **result["pruned"]}
    emit(args, result, compare_text(result))
    return 0


def _layers(args: argparse.Namespace) -> int:
    from ..measure.layers import KINDS, layer_profile
    from .common import emit

    runs = {"run": _run_dir(args.run, "RUN")}
    if args.compare is not None:
        runs = {"base": _run_dir(args.compare, "--compare"), "pruned": runs["run"]}
    result: dict[str, Any] = {}
    for name, d in runs.items():
        shape = tuple(input_shape_of(d, load_spec(d)))
        prof = layer_profile(load(d), shape, batch=args.layers, warmup=args.warmup,
                             repeats=args.repeats, runtimes=args.runtimes)
        result[name] = {"run": str(d), "input_shape": list(shape), **prof}
    headers, rows = ["kind"], []
    for name, prof in result.items():
        for rt in prof["runtimes"]:
            headers.append(f"{name} {rt} ms")
        headers.append(f"{name} MMACs")
    for kind in KINDS:
        row, any_value = [kind], False
        for prof in result.values():
            for rt in prof["runtimes"].values():
                v = rt["by_kind_ms"].get(kind)
                any_value |= v is not None
                row.append("-" if v is None else f"{v:.2f}")
            m = prof["macs"].get(kind)
            row.append("-" if m is None else f"{m / 1e6:.1f}")
        if any_value:
            rows.append(row)
    total = ["whole pass"]
    for prof in result.values():
        total += [f"{rt['total_ms']:.2f}" for rt in prof["runtimes"].values()]
        total.append(f"{sum(prof['macs'].values()) / 1e6:.1f}")
    rows.append(total)
    lines = [f"time per batch of {args.layers}, by kind of layer (eager: hooks on every leaf "
             "module, add = the rest of the pass; onnxruntime: its profiler's kernel times by "
             "operator, after its own fusions)", text_table(headers, rows)]
    for name, prof in result.items():
        conv_macs = prof["macs"].get("conv", 0)
        for rt_name, rt in prof["runtimes"].items():
            ms = rt["by_kind_ms"].get("conv")
            if ms and conv_macs:
                lines.append(f"{name} {rt_name}: convolutions {conv_macs / ms / 1e6:.2f} GMAC/s")
        lines += [f"skipped: {s}" for s in prof["skipped"]]
    emit(args, result, "\n".join(lines))
    return 0


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def compare_text(result: dict[str, Any]) -> str:
    """The --compare result as tables and a plain-language verdict."""
    from ..measure.compare import verdict

    names = ["base", "pruned"] + (["rounded"] if "rounded" in result else [])
    size_rows = []
    for name in names:
        m = result[name]
        label = m.get("run", f"pruned, widths rounded up to multiples of {m.get('round_to')}")
        size_rows.append([name, label, fmt_count(m["params"]), fmt_count(m["macs"]), m["depth"]])
    threads = result["threads"]
    lines = [text_table(["", "run", "params", "MACs", "depth"], size_rows), "",
             f"params ratio {_x(result['params_ratio'])}, MACs ratio {_x(result['macs_ratio'])}"
             f" (base / pruned); input {result['input_shape']}; median of {result['repeats']} "
             f"runs after {result['warmup']} warm-up, models interleaved; "
             f"{threads} CPU thread{'s' if threads != 1 else ''}", ""]
    headers = ["runtime", "device", "batch", "base", "pruned", "speed-up"]
    rounded = "rounded" in result
    if rounded:
        headers += [f"rounded {result['rounded']['round_to']}", "speed-up"]
    headers.append("note")
    rows = []
    for r in result["latency"]:
        row = [r["runtime"], r["device"], r["batch"], fmt_ms(r["base_ms"]),
               fmt_ms(r["pruned_ms"]), _x(r["speedup"])]
        if rounded:
            row += [fmt_ms(r.get("rounded_ms")), _x(r.get("rounded_speedup"))]
        rows.append(row + [r["note"] or "-"])
    if rows:
        lines.append(text_table(headers, rows))
    lines += [""] + verdict(result)
    lines += [f"skipped: {s}" for s in result["skipped"]]
    return "\n".join(lines).rstrip()
