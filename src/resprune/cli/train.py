"""``resprune train``: train a zoo model from scratch into a run directory."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn

from ..checkpoint import load
from ..errors import UserError
from ..io import read_json
from ..models import build, create, list_models, spec_of
from ..runs import prepare_out
from . import common, options


def add_parser(subs) -> None:
    p = subs.add_parser(
        "train", help="train a zoo model from scratch",
        description="Train a model from the zoo on a dataset and write a run directory "
                    "(model.safetensors, arch.json, metrics.jsonl, summary.json, report.md). "
                    "Validation accuracy is measured on a split carved from the training set; "
                    "the test set is only reported.")
    g = add_model_options(p.add_argument_group("model"))
    g.add_argument("--init", metavar="RUN",
                   help="start from the model of this run instead (fine-tuning; e.g. a pruned "
                        "model); its architecture is kept")
    g.add_argument("--arch", metavar="FILE",
                   help="train this architecture spec (an arch.json, e.g. of a pruned run) "
                        "from a fresh initialisation")
    options.add_data(p)
    options.add_train(p)
    options.add_output(p)
    options.add_config(p)
    p.set_defaults(func=run)


def add_model_options(g):
    """``--model NAME`` and the zoo's model options (shared with ``compress --model``)."""
    g.add_argument("--model", choices=list_models(), metavar="NAME",
                   help=f"zoo model to train from scratch: {', '.join(list_models())}")
    g.add_argument("--shortcut", choices=["A", "B"],
                   help="CIFAR ResNets: A = zero padding (default), B = 1x1 conv + BN")
    g.add_argument("--width", type=options.positive_int,
                   help="CIFAR models: first-stage width (ResNet 16, ResNeXt-29 64)")
    g.add_argument("--cardinality", type=options.positive_int, help="ResNeXt-29 cardinality (8)")
    g.add_argument("--base-width", type=options.positive_int, help="ResNeXt-29 base width (64)")
    g.add_argument("--priority-gates", action="store_true",
                   help="train with Network Implosion priority gates on every erasable unit")
    return g


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
    from ..train.run import train_run

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
    loaders = common.make_loaders(bundle, args, device)
    name = args.model or spec_of(model)["arch"]
    teacher = common.distillation(args, args.init)
    common.check_teacher(teacher, model)
    result = train_run(model, loaders, cfg, out=out, resume=resuming, distill=teacher,
                       progress=not args.no_progress, input_shape=input_shape(bundle),
                       summary_extra=common.base_summary("train", name, args, bundle,
                                                         input_shape(bundle), started))
    common.emit(args, result.summary, common.metrics_table([(name, result.summary)])
                + f"\nrun directory: {out} (report: {out / 'report.md'})")
    return 0
