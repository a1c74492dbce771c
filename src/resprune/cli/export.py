"""``resprune export``: ONNX or TorchScript, checked against PyTorch before it is written."""

from __future__ import annotations

import argparse

from ..checkpoint import load, load_spec
from ..runs import input_shape_of
from . import options


def add_parser(subs) -> None:
    p = subs.add_parser(
        "export", help="export a run's model to ONNX or TorchScript",
        description="Export the model of RUN with static C/H/W and a dynamic batch dimension. "
                    "The written file is run (onnxruntime for ONNX) at batch sizes 1 and 3 and "
                    "must match PyTorch within --atol (max abs), or nothing is written.")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write")
    p.add_argument("--opset", type=options.positive_int, default=18, help="ONNX opset (>= 18)")
    p.add_argument("--atol", type=options.nonneg_float, default=1e-4,
                   help="largest allowed max-abs difference to PyTorch (1e-4)")
    p.add_argument("--preprocess", action="store_true",
                   help="bake the model's input normalisation (mean/std) into the graph: the "
                        "exported model takes RGB images scaled to [0, 1]")
    p.add_argument("--fold", action="store_true",
                   help="export the deployment form: priority gates and BatchNorms folded into "
                        "the convolutions (parity-checked; the ONNX exporter folds BNs itself, "
                        "so for ONNX this removes the gates' multiplies)")
    p.add_argument("--pad-channels", type=options.multiple_or_auto, default=None,
                   metavar="N|auto",
                   help="round every channel count up to a multiple of N with zero channels "
                        "(the same logits, parity-checked): onnxruntime computes in blocks of "
                        "8 (AVX2) or 16 (AVX-512) channels and may run pruned nets with odd "
                        "widths faster padded; auto: time the exact and the padded form (to "
                        "this CPU's block) in onnxruntime at --pad-batch and export the faster")
    p.add_argument("--pad-batch", type=options.positive_int, default=64, metavar="B",
                   help="batch size --pad-channels auto decides at (64); the faster form "
                        "depends on it")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    options.add_config(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export
    from ..report import fmt_count
    from .common import emit

    spec = load_spec(args.run)
    model = load(args.run)
    info = export(model, args.out, format=args.format, input_shape=input_shape_of(args.run, spec),
                  opset=args.opset, atol=args.atol, preprocess=args.preprocess,
                  fold=args.fold, pad_to=args.pad_channels,
                  pad_batch=args.pad_batch)
    info = {k: (str(v) if k == "path" else v) for k, v in info.items()}
    info["preprocess"] = model.preprocess if args.preprocess else None
    text = (f"wrote {info['path']} ({args.format}, {info['bytes'] / 1e6:.2f} MB, "
            f"{fmt_count(info['params'])} params); max |diff| to PyTorch "
            f"{info['max_abs_diff']:.2e} at batch sizes {info['batch_sizes']}")
    if info["padding"] is not None:
        text += f"\nchannel padding (auto): {info['padding']['reason']}"
    elif info["pad_to"] is not None:
        text += f"\nchannels padded with zeros to multiples of {info['pad_to']}"
    emit(args, info, text)
    return 0
