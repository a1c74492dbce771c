"""``resprune compress``: depth (Network Implosion) and width (VACL) in one resumable pipeline.

The command parses its options into a :class:`resprune.CompressConfig` (the parser adopts the
options of ``train``, ``implode`` and ``vacl``, so every stage option is defined once, in its
command), opens the input run (or builds ``--model NAME``, which a ``train`` stage trains
first), and calls :func:`resprune.compress`, which runs the stages into ``OUT/stages/<i>-<name>``
and writes ``OUT`` (stages: :mod:`resprune.compression.pipeline`; ``summary.json`` fields:
:mod:`resprune.compression.summary`); then it prints the result.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..compression import CompressConfig, compress
from ..errors import UserError
from ..implosion import ImplosionConfig
from ..report import fmt_acc, fmt_pct
from ..report.tables import targets_of
from ..runs import prepare_out
from ..vacl import VaclConfig
from ..vacl.config import one_rule
from . import common, options
from .config import resolved
from .evaluate import inherit_data_options
from .vacl import GROUPS as VACL_GROUPS
from .vacl import RULES_GROUP, add_plan, check_plan_args, plan_text

STAGES = ("implode", "vacl", "finetune")
DEFAULT_STAGES = "implode,vacl,finetune"
STAGES_DIR = "stages"
MODEL_OPTIONS = ("shortcut", "width", "cardinality", "base_width")
RULES = (("target_params_reduction", "--target-params-reduction"),
         ("target_macs_reduction", "--target-macs-reduction"),
         ("target_latency_reduction", "--target-latency-reduction"),
         ("target_latency", "--target-latency"),
         ("threshold", "--threshold"), ("auto_tolerance", "--auto-tolerance"))


def stage_list(value: Any) -> list[str]:
    """``"implode,vacl"`` (or a YAML list) -> ``["implode", "vacl"]``, checked."""
    items = value if isinstance(value, list) else str(value).split(",")
    names = [str(s).strip() for s in items]
    if not names or any(not n for n in names):
        raise argparse.ArgumentTypeError(f"empty stage name in {value!r}; list stages "
                                         f"separated by commas, e.g. {DEFAULT_STAGES}")
    for i, n in enumerate(names):
        if n not in STAGES:
            raise argparse.ArgumentTypeError(f"unknown stage {n!r}; choose from "
                                             f"{', '.join(STAGES)}")
        if n in names[:i]:
            raise argparse.ArgumentTypeError(f"stage {n!r} is listed twice; each stage runs "
                                             "at most once")
    return names


def add_parser(subs) -> None:
    from .train import add_model_options

    p = subs.add_parser(
        "compress", help="depth (implosion) and width (VACL) pruning in one resumable pipeline",
        description="Compress a trained run (or a zoo model trained first with --model): "
                    "Network Implosion erases whole residual units while validation accuracy "
                    "holds, VACL removes channel groups, and a last fine-tuning recovers "
                    "accuracy. Each stage is the real command, run in OUT/stages/<i>-<name>; "
                    "OUT receives the final model. With a target reduction the VACL stage "
                    "removes what the earlier stages left to reach it; without one, every "
                    "stage goes as far as validation accuracy holds.")
    p.add_argument("run", nargs="?", metavar="RUN",
                   help="input run directory (model.safetensors + arch.json, e.g. written by "
                        "'resprune train'); or give --model NAME instead")
    g = p.add_argument_group("pipeline")
    g.add_argument("--stages", type=stage_list, default=DEFAULT_STAGES, metavar="LIST",
                   help=f"stages in order, comma-separated, each at most once (default "
                        f"{DEFAULT_STAGES}); with --model a train stage comes first")
    options.add_fields(g, CompressConfig, ("finetune_final_epochs", "finetune_final_lr"))
    options.add_fields(p.add_argument_group(
        "budget (at most one of, or params and MACs together)"), CompressConfig,
                       [k for k, _ in RULES])
    add_model_options(p.add_argument_group(
        "base model (with --model: trained from scratch first)"))
    options.add_data(p, required=False)
    options.add_train(p, title="training (every stage)", seed_of="every stage", helps={
        "seed": "seed of the validation split and of every training (default: with --model "
                "0, with RUN the run's seed)",
        "epochs": "epochs of the base training (--model only; default 30)",
        "lr": "peak learning rate of the base training (--model only; default 0.1)",
        "warmup_epochs": "linear warm-up epochs of the base training (--model only; 0); the "
                         "stages that start from trained weights never warm up"})
    options.add_output(p, required=False)
    add_plan(p, "print what the vacl stage's rule removes from RUN (params, MACs, channel "
                "groups) under each ranking cost (none, params, macs) if implosion erases "
                "nothing, and exit: trains and writes nothing, so --out is not needed")
    seen = set(options.add_fields(
        p.add_argument_group("implode stage (Network Implosion)"), ImplosionConfig, helps={
            "cost": "none: rank by priority (implode) and score (vacl); params, macs: by "
                    "priority or score per param / MAC saved; latency: per unit of latency "
                    "saved, from per-layer latency tables of each stage's input "
                    "(--latency-runtime, --latency-batch)",
            "reconstruct": "both stages: right after the implode stage's cut(s) and after "
                           "each of the vacl stage's pruning steps, re-fit every remaining "
                           "conv and linear layer by least squares to the net before that "
                           "removal, on N training images (0: off; needs --erase cut; "
                           "docs/vacl.md, \"Reconstruction\")"}))
    for title, names in VACL_GROUPS.items():  # fields both stages share appear once
        if title != RULES_GROUP:
            options.add_fields(p.add_argument_group(f"vacl stage: {title}"), VaclConfig,
                               names, skip=seen)
    options.add_config(p)
    p.set_defaults(func=run)


# -- checks -------------------------------------------------------------------------------------

def plan(args: argparse.Namespace) -> list[str]:
    """The stages to run, in order (``train`` first with --model); checks the options."""
    if (args.run is None) == (args.model is None):
        raise UserError("give either RUN (a trained run to compress) or --model NAME (train "
                        "it first), " + ("not both" if args.run is not None else "got neither"))
    if args.run is not None and (args.priority_gates or any(
            getattr(args, k) is not None for k in MODEL_OPTIONS)):
        raise UserError("model options (--shortcut, --width, --priority-gates, ...) only "
                        "apply with --model")
    if args.model is not None and args.data is None:
        raise UserError("--data is required with --model (the dataset to train on)")
    dests = [dest for dest, _ in RULES if getattr(args, dest, None) is not None]
    given = [flag for dest, flag in RULES if dest in dests]
    if dests and not one_rule(dests):
        raise UserError(f"give at most one of {', '.join(f for _, f in RULES)}, or both "
                        f"--target-params-reduction and --target-macs-reduction (got "
                        f"{', '.join(given)})")
    if args.model is not None and getattr(args, "distill_from", None) == "input":
        raise UserError("--distill-from input needs an input run; with --model, train the "
                        "base first and compress it, or pass --distill-from RUN")
    stages = list(args.stages)
    if given and "vacl" not in stages:
        raise UserError(f"{given[0]} applies to the vacl stage, which --stages "
                        f"{','.join(stages)} leaves out; add vacl or drop the option")
    return (["train"] if args.model is not None else []) + stages


def compress_config(args: argparse.Namespace, stages: list[str]) -> CompressConfig:
    """The :class:`CompressConfig` of the command's options, checked."""
    names = {f.name for f in dataclasses.fields(CompressConfig)} - {"train", "stages"}
    fields = {n: getattr(args, n) for n in names if hasattr(args, n)}
    fields["tolerance"] = float(fields["tolerance"])
    return CompressConfig(**fields, stages=tuple(stages),
                          train=common.train_config(args)).validate()


def _input_model(args: argparse.Namespace, stages: list[str], bundle) -> Any:
    """The model the pipeline starts from: the input run's, or ``--model NAME`` built."""
    from ..models import create
    from .train import model_options

    if args.run is not None:
        model, spec, _ = common.load_input_run(args.run, "compress")
        common.check_data_fits(bundle, spec, args)
    else:
        torch.manual_seed(args.seed)  # the initial weights are a function of --seed
        opts = model_options(args)
        if "implode" in stages:
            opts["gates"] = True
        model = create(args.model, num_classes=bundle.num_classes,
                       in_channels=bundle.in_channels, **opts)
    common.adopt_preprocess(model, bundle)
    return model


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_spec
    from ..data import input_shape, with_preprocess

    check_plan_args(args)
    if args.plan:
        return print_plan(args)
    resuming = bool(args.resume)
    if resuming:  # the saved options win (record_command), so read them first
        out, resuming = prepare_out(args.out, overwrite=args.overwrite, resume=True,
                                    source=args.run)
        if resuming:
            common.record_command(args, out, True)
    stages = plan(args)
    if args.run is not None:
        _, _, summary_in = common.load_input_run(args.run, "compress")
        inherit_data_options(args, summary_in)
    elif args.seed is None:
        args.seed = 0
    config = compress_config(args, stages)
    bundle = common.load_data(args)
    if args.run is not None:
        with_preprocess(bundle, load_spec(args.run).get("preprocess"))
    model = _input_model(args, stages, bundle)
    teacher = common.distillation(args, args.run)
    common.check_teacher(teacher, model)
    if not resuming:
        out, _ = prepare_out(args.out, overwrite=args.overwrite, source=args.run)
        common.record_command(args, out, False)
    device = common.resolve_device(args.device)
    loaders = common.make_loaders(bundle, args, device)
    result = compress(model, loaders, config, out=out, resume=resuming, distill=teacher,
                      progress=not args.no_progress, input_shape=input_shape(bundle),
                      source=args.run,
                      summary_extra={"data": common.data_info(bundle, args),
                                     "config": resolved(args)})
    common.emit(args, result.summary, terminal_text(result.summary, out))
    return 0


def print_plan(args: argparse.Namespace) -> int:
    """``--plan``: :func:`resprune.vacl.plan` of the vacl stage's rule on the input run, as if
    implosion erased nothing (each unit it erases leaves the vacl stage less to remove)."""
    from ..data import input_shape, with_preprocess
    from ..vacl import plan as vacl_plan

    if args.run is None:
        raise UserError("--plan ranks the channel groups of a trained run: give RUN, not "
                        "--model")
    stages = plan(args)
    if "vacl" not in stages:
        raise UserError(f"--plan shows the vacl stage's pruning, which --stages "
                        f"{','.join(stages)} leaves out")
    _, spec, summary_in = common.load_input_run(args.run, "compress")
    inherit_data_options(args, summary_in)
    config = compress_config(args, stages)
    b = config.budget()
    rule = ({f"target_{m}_reduction": r for m, r in b["targets"].items()}
            if b.get("targets") else
            {"threshold": b["threshold"]} if b["mode"] == "threshold" else None)
    if rule is None:
        raise UserError("--plan needs --target-params-reduction, --target-macs-reduction or "
                        "--threshold (latency targets need a measured table; without a "
                        "target the stages go as far as validation accuracy holds)")
    bundle = common.load_data(args)
    with_preprocess(bundle, spec.get("preprocess"))
    model = _input_model(args, stages, bundle)
    vacl_config = config.vacl_config(rule)
    rows = vacl_plan(model, common.make_loaders(bundle, args, common.resolve_device(
        args.device)), vacl_config, input_shape=input_shape(bundle),
        recalibrate=args.plan_recalibrate or 0)
    common.emit(args, rows, "compress, vacl stage if implosion erases nothing: "
                + plan_text(rows, vacl_config))
    return 0


def terminal_text(summary: dict[str, Any], out: Path) -> str:
    rows = [("base" + (" (trained)" if summary["stages"][0]["name"] == "train" else ""),
             summary["base"])]
    rows += [(f"after {r['name']}", r) for r in summary["stages"] if r["name"] != "train"]
    b = summary["budget"]
    target = ""
    if "reached" in b:
        goals = ([f"{m} reduction {fmt_pct(100 * r)}" for m, r in targets_of(b).items()]
                 or [f"latency at most {b.get('target_ms')} ms"])
        target = f"; target {', '.join(goals)} " + ("reached" if b["reached"] else
                                                    "NOT reached")
    return "\n".join([
        common.metrics_table(rows), "",
        f"removed {fmt_pct(summary['params_removed_pct'])} of params, "
        f"{fmt_pct(summary['macs_removed_pct'])} of MACs, "
        f"{fmt_pct(summary['layers_removed_pct'])} of weight layers{target}; test top-1 "
        f"{fmt_acc(summary['base'].get('top1'))} -> {fmt_acc(summary.get('top1'))}",
        f"run directory: {out} (report: {out / 'report.md'}; stages in {out / STAGES_DIR})"])
