"""``resprune eval``: accuracy of a saved run on its test or validation split."""

from __future__ import annotations

import argparse

from ..checkpoint import load, load_spec
from ..errors import UserError
from ..report import fmt_acc, text_table
from ..runs import read_summary
from . import common, options


def add_parser(subs) -> None:
    p = subs.add_parser(
        "eval", help="evaluate a run on the test or validation split",
        description="Evaluate the model saved in RUN. Data options default to the ones the run "
                    "was trained with, so --split val is the run's own validation split.")
    p.add_argument("run", metavar="RUN", help="run directory")
    options.add_data(p, required=False)
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="which split (default test)")
    p.add_argument("--batch-size", type=options.positive_int, default=256)
    p.add_argument("--seed", type=options.nonneg_int,
                   help="seed of the validation split (default: the run's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    options.add_config(p)
    p.set_defaults(func=run)


def inherit_data_options(args: argparse.Namespace, summary: dict) -> None:
    """Fill unset data options from the run, so its validation split is reproduced."""
    data = summary.get("data", {})
    if args.data is None:
        args.data = data.get("name")
    if args.data_dir is None and args.data == data.get("name"):
        args.data_dir = data.get("data_dir")
    if getattr(args, "seed", None) is None:
        args.seed = int(data.get("seed", 0))
    if args.val_fraction == 0.1 and "val_fraction" in data:
        args.val_fraction = float(data["val_fraction"])
    if args.data is None:
        raise UserError("--data is required: the run does not say which dataset it used")


def run(args: argparse.Namespace) -> int:
    from ..data import make_loader
    from ..measure import evaluate

    load_spec(args.run)  # clear error when RUN is not a run directory
    summary = read_summary(args.run)
    inherit_data_options(args, summary)
    device = common.resolve_device(args.device)
    model = load(args.run, device=device)
    bundle = common.load_data(args, model.preprocess)
    loader = make_loader(bundle, args.split, args.batch_size, train=False, device=device,
                         seed=args.seed)
    if loader.num_samples == 0:
        raise UserError(f"the {args.split} split is empty (--val-fraction "
                         f"{args.val_fraction}); nothing to evaluate")
    r = evaluate(model, loader, precision=args.precision)
    result = {"run": str(args.run), "data": args.data, "split": args.split, **r}
    common.emit(args, result, text_table(["run", "split", "images", "top-1", "top-5", "loss"],
                                         [[args.run, args.split, r["n"], fmt_acc(r["top1"]),
                                           fmt_acc(r["top5"]), f"{r['loss']:.4f}"]]))
    return 0
