"""``resprune profile``: params, MACs, depth and measured latency of a run."""

from __future__ import annotations

import argparse

from ..checkpoint import load, load_spec
from ..report import fmt_count, fmt_ms, text_table
from ..runs import input_shape_of
from . import options


def add_parser(subs) -> None:
    p = subs.add_parser(
        "profile", help="params, MACs, depth and latency of a run",
        description="Count params and MACs (multiply-accumulates of conv and linear layers, "
                    "PyTorch's FLOP counter / 2), depth (weight layers on the main path) and "
                    "measure latency as the median of repeated timed runs after warm-up.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--batch-sizes", type=options.positive_int, nargs="+", default=[1, 64, 256],
                   help="latency batch sizes (1 64 256)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--warmup", type=options.nonneg_int, default=3)
    p.add_argument("--repeats", type=options.positive_int, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    options.add_config(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..measure import count_macs, count_params, depth, latency
    from .common import emit, resolve_device

    spec = load_spec(args.run)
    device = resolve_device(args.device)
    model = load(args.run).eval()
    shape = tuple(input_shape_of(args.run, spec))
    lat = latency(model, shape, batch_sizes=tuple(args.batch_sizes), device=str(device),
                  warmup=args.warmup, repeats=args.repeats)
    result = {"run": str(args.run), "model": spec["arch"], "input_shape": list(shape),
              "params": count_params(model), "macs": count_macs(model, shape),
              "depth": depth(model), "device": str(device),
              "latency": {str(bs): v for bs, v in lat.items()}}
    rows = [[f"batch {bs}", fmt_ms(v["median_ms"]), f"{v['images_per_s']:.1f}"]
            for bs, v in lat.items()]
    text = (f"{args.run}: {spec['arch']}, input {list(shape)}\n"
            f"params {fmt_count(result['params'])}, MACs {fmt_count(result['macs'])}, "
            f"depth {result['depth']} weight layers\n"
            + text_table([f"latency ({device})", "median", "images/s"], rows))
    emit(args, result, text)
    return 0
