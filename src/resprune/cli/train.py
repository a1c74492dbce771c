"""``resprune train``: train a zoo model from scratch into a run directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load, save
from ..errors import UserError
from ..io import atomic_write_text, read_json
from ..models import build, create, list_models, spec_of
from ..report import markdown_table
from ..report.plots import training_curves
from ..runs import prepare_out, write_summary
from ..train import STATE_FILE
from . import common, options


def add_parser(subs) -> None:
    p = subs.add_parser(
        "train", help="train a zoo model from scratch",
        description="Train a model from the zoo on a dataset and write a run directory "
                    "(model.safetensors, arch.json, metrics.jsonl, summary.json, report.md). "
                    "Validation accuracy is measured on a split carved from the training set; "
                    "the test set is only reported.")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=list_models(), metavar="NAME",
                   help=f"zoo model to train from scratch: {', '.join(list_models())}")
    g.add_argument("--init", metavar="RUN",
                   help="start from the model of this run instead (fine-tuning; e.g. a pruned "
                        "model); its architecture is kept")
    g.add_argument("--arch", metavar="FILE",
                   help="train this architecture spec (an arch.json, e.g. of a pruned run) "
                        "from a fresh initialisation")
    g.add_argument("--shortcut", choices=["A", "B"],
                   help="CIFAR ResNets: A = zero padding (default), B = 1x1 conv + BN")
    g.add_argument("--width", type=options.positive_int,
                   help="CIFAR models: first-stage width (ResNet 16, ResNeXt-29 64)")
    g.add_argument("--cardinality", type=options.positive_int, help="ResNeXt-29 cardinality (8)")
    g.add_argument("--base-width", type=options.positive_int, help="ResNeXt-29 base width (64)")
    g.add_argument("--priority-gates", action="store_true",
                   help="train with Network Implosion priority gates on every erasable unit")
    options.add_data(p)
    options.add_train(p)
    options.add_output(p)
    options.add_config(p)
    p.set_defaults(func=run)


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = {k: getattr(args, k) for k in ("shortcut", "width", "cardinality", "base_width")
            if getattr(args, k, None) is not None}
    if getattr(args, "priority_gates", False):
        opts["gates"] = True
    return opts


def start_preprocess(args: argparse.Namespace) -> dict[str, Any] | None:
    """The preprocessing of the model training starts from (--init, --arch), if recorded."""
    from ..checkpoint import load_spec

    if args.init is not None:
        return load_spec(args.init).get("preprocess")
    if args.arch is not None:
        return read_json(args.arch, "architecture file").get("preprocess")
    return None


def initial_model(args: argparse.Namespace, bundle) -> nn.Module:
    torch.manual_seed(args.seed)  # the initial weights are a function of --seed
    if args.model is not None:
        return create(args.model, num_classes=bundle.num_classes,
                      in_channels=bundle.in_channels, **model_options(args))
    if args.arch is not None:
        model = build(read_json(args.arch, "architecture file"))
        source = args.arch
    else:
        model = load(args.init)
        source = args.init
    spec = spec_of(model)
    if spec["num_classes"] != bundle.num_classes or spec["in_channels"] != bundle.in_channels:
        raise UserError(f"the model of {source} takes {spec['in_channels']}-channel images "
                        f"and has {spec['num_classes']} classes, but --data {args.data} has "
                        f"{bundle.in_channels} and {bundle.num_classes}")
    if model_options(args):
        raise UserError("model options (--shortcut, --width, --priority-gates, ...) only "
                        "apply with --model")
    return model


def run(args: argparse.Namespace) -> int:
    from ..data import input_shape
    from ..train import Trainer

    started = time.time()
    if sum(x is not None for x in (args.model, args.init, args.arch)) != 1:
        raise UserError("pass exactly one of --model NAME (a zoo model from scratch), "
                        "--arch FILE (an architecture spec from scratch) or --init RUN "
                        "(start from a run's model)")
    out, resuming = prepare_out(args.out, overwrite=args.overwrite, resume=args.resume,
                                source=args.init)
    common.record_command(args, out, resuming)
    device = common.resolve_device(args.device)
    bundle = common.load_data(args, start_preprocess(args))
    model = initial_model(args, bundle)
    common.adopt_preprocess(model, bundle)
    cfg = common.train_config(args)
    train_loader, val_loader, test_loader = common.make_loaders(bundle, args, device)
    teacher = common.distillation(args, args.init)
    common.check_teacher(teacher, model)
    trainer = Trainer(model, train_loader, val_loader, cfg, run_dir=out,
                      progress=not args.no_progress, distill=teacher)
    # killed before its first epoch ended: nothing to continue, so it starts over (same seed)
    history = trainer.fit(resume=resuming and (out / STATE_FILE).is_file())
    model = trainer.model
    save(model, out)
    shape = input_shape(bundle)
    m = common.measure(model, shape, {"val": val_loader, "test": test_loader}, device,
                       args.precision)
    name = args.model or spec_of(model)["arch"]
    summary = common.base_summary("train", name, args, bundle, shape, started)
    summary.update(m)
    summary["epochs"] = len(history)
    summary["seconds"] = round(sum(r.get("seconds", 0.0) for r in history), 2)
    write_summary(out, summary)
    write_report(out, summary, history)
    common.emit(args, summary, common.metrics_table([(name, summary)])
                + f"\nrun directory: {out} (report: {out / 'report.md'})")
    return 0


def write_report(out: Path, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
    from ..report import fmt_acc, fmt_count

    lines = [f"# Training run: {summary['model']} on {summary['data']['name']}\n",
             markdown_table(["params", "MACs", "depth (weight layers)", "val top-1",
                             "test top-1", "epochs", "seconds"],
                            [[fmt_count(summary["params"]), fmt_count(summary["macs"]),
                              summary["depth"], fmt_acc(summary.get("val_top1")),
                              fmt_acc(summary.get("top1")), summary["epochs"],
                              summary["seconds"]]]),
             "MACs are multiply-accumulates of convolutions and linear layers for one image "
             f"of shape {summary['input_shape']}.\n"]
    if history:
        training_curves(history, out / "training.png", title=summary["model"])
        lines.append("![training curves](training.png)\n")
    atomic_write_text(out / "report.md", "\n".join(lines))
