"""``resprune demo``: the product end to end on a real offline dataset, in a few minutes.

The demo is a fixed chain of ordinary resprune commands (nothing demo-only happens inside):
train a small ResNet-20 on the handwritten digits shipped with scikit-learn, compress it
(Network Implosion erases residual units, VACL removes channel groups, a last fine-tune),
export the result to ONNX (checked against PyTorch), and print a before/after table. Each
command writes its own run directory under ``--out``; every decision uses the validation
split, and the test split is only reported.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path

from ..checkpoint import load
from ..errors import UserError
from ..measure.compare import compare
from ..runs import read_summary
from . import options
from .common import emit, metrics_table

DEMO_MARK = ".resprune-demo"


def add_parser(subs) -> None:
    p = subs.add_parser(
        "demo", help="train a small ResNet on offline real data and show its numbers",
        description="Needs no download: trains a ResNet-20 on the handwritten digits that "
                    "ship with scikit-learn (8x8 scans upsampled to 16x16), compresses it "
                    "to 40 % of its params (implosion + VACL + fine-tune), exports it to "
                    "ONNX and prints a "
                    "before/after table of params, MACs, depth, CPU latency and test accuracy.")
    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="where the demo writes its runs (default runs/demo; a previous demo "
                        "there is replaced, any other content is refused)")
    p.add_argument("--epochs", type=options.positive_int, default=12,
                   help="training epochs (12)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    options.add_config(p)
    p.set_defaults(func=run)


def _prepare(out: Path) -> None:
    if out.exists():
        if not (out / DEMO_MARK).is_file():
            if out.is_dir() and not any(out.iterdir()):
                shutil.rmtree(out)
            else:
                raise UserError(f"{out} exists and is not a demo directory; pass another --out")
        else:
            shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARK).write_text("written by 'resprune demo'; replaced by the next demo\n")


def _step(argv: list[str], title: str) -> None:
    from .main import main

    print(f"\n== {title}: resprune {' '.join(argv)}", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds only the demo's result
        code = main(argv)
    if code != 0:
        raise UserError(f"demo step '{title}' failed (exit status {code})")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _prepare(out)
    quiet = ["--no-progress"] if args.no_progress else []
    base = out / "base"
    _step(["train", "--model", "resnet20", "--priority-gates", "--data", "digits",
           "--val-fraction", "0.2", "--epochs", str(args.epochs), "--batch-size", "64",
           "--lr", "0.05", "--out", str(base), *quiet],
          "train ResNet-20 on scikit-learn digits")
    small = out / "compressed"
    _step(["compress", str(base), "--stages", "implode,vacl,finetune",
           "--per-step", "2", "--retrain-epochs", "1", "--max-steps", "3", "--tolerance", "1.5",
           "--sparse-epochs", "3", "--lam", "1e-2", "--target-params-reduction", "0.6",
           "--finetune-epochs", "2", "--finetune-final-epochs", "2", "--batch-size", "64",
           "--out", str(small), *quiet],
          "compress: implode (depth) -> VACL (width) -> fine-tune")
    onnx = out / "compressed.onnx"
    _step(["export", str(small), "--format", "onnx", "--out", str(onnx)],
          "export the compressed model to ONNX (checked against PyTorch)")
    before, after = read_summary(base), read_summary(small)
    # the before/after latencies of the table: one interleaved timing of both models (the
    # summaries' own were timed minutes apart, under whatever load there was then)
    timing = compare(load(base), load(small), after["input_shape"], batch_sizes=(1, 64),
                     runtimes=("eager",), devices=["cpu"])
    paired = {name: {str(r["batch"]): round(r[f"{name}_ms"], 4) for r in timing["latency"]}
              for name in ("base", "pruned")}
    before = {**before, "cpu_latency_ms": paired["base"]}
    after = {**after, "cpu_latency_ms": paired["pruned"]}
    speedups = ", ".join(f"{r['speedup']:.2f}x at batch {r['batch']}"
                         for r in timing["latency"])
    result = {"base": before, "compressed": after, "onnx": str(onnx),
              "report": str(small / "report.md"), "latency": timing}
    emit(args, result, "\n" + metrics_table([("ResNet-20 (trained)", before),
                                             ("compressed", after)])
         + f"\n\nparams -{after['params_removed_pct']:.1f} %, MACs "
           f"-{after['macs_removed_pct']:.1f} %, weight layers "
           f"-{after['layers_removed_pct']:.1f} %; CPU speed-up {speedups} (eager, "
           f"{timing['threads']} thread(s), both models timed interleaved)\n"
           f"report: {small / 'report.md'}\nONNX:   {onnx}")
    return 0
