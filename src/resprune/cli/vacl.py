"""``resprune vacl``: VACL width pruning of a trained run (cross-layer channel groups).

The command parses its options into a :class:`resprune.vacl.VaclConfig`, opens the input run
and its data, and calls :func:`resprune.vacl.run_pipeline`, which does the work (sparsity
training -> pruning -> fine-tuning, resumable; see its module for the stages and
:mod:`resprune.vacl.summary` for the fields of ``summary.json``); then it prints the result.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..report import fmt_acc, fmt_count
from ..train import FADES
from ..vacl import FORMS, LAM_SCHEDULES, SCORES, VaclConfig, run_pipeline
from ..vacl.config import RULES
from . import common, options


def add_parser(subs) -> None:
    p = subs.add_parser(
        "vacl", help="VACL: width pruning of cross-layer channel groups",
        description="Width pruning of a trained run: sparsity-train with the variance-aware "
                    "cross-layer group regularizer, remove the channel groups with the lowest "
                    "RMS norm (by --threshold or down to a target reduction of params or "
                    "MACs), then fine-tune without the regularizer. Data options default to "
                    "the input run's, so its validation split is reproduced; the test set is "
                    "only reported. Give exactly one of --threshold, --target-params-reduction, "
                    "--target-macs-reduction and --auto-tolerance.")
    p.add_argument("run", metavar="RUN", help="input run directory (model.safetensors + "
                   "arch.json, e.g. written by 'resprune train')")
    g = p.add_argument_group("sparsity training (VACL regularizer)")
    g.add_argument("--lam", type=options.nonneg_float, default=1e-4,
                   help="regularizer strength lambda: loss = CE + lam * R (default 1e-4)")
    g.add_argument("--beta", type=options.nonneg_float, default=4.0,
                   help="weight of the within-group variance term (default 4; with "
                        "--form moments, 1 is plain cross-layer group lasso)")
    g.add_argument("--form", choices=FORMS, default="moments",
                   help="regularizer form for cross-layer groups: moments (default), "
                        "additive or mean_std (see docs/vacl.md)")
    g.add_argument("--include-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="put each producer's BN gamma/beta into its group (default on)")
    g.add_argument("--include-consumers", action=argparse.BooleanOptionalAction,
                   default=False,
                   help="also put the consumers' input slices into the groups (default off)")
    g.add_argument("--lam-schedule", choices=LAM_SCHEDULES, default="constant",
                   help="constant (default), or raise: multiply lambda by --lam-growth after "
                        "every sparsity epoch in which fewer groups are near zero than pruning "
                        "will remove, so pruning removes groups already near zero")
    g.add_argument("--lam-growth", type=options.positive_float, default=2.0,
                   help="factor of the raise schedule (default 2)")
    g.add_argument("--lam-max", type=options.positive_float,
                   help="raise schedule: never raise lambda above this (default: no cap)")
    g.add_argument("--near-zero", type=options.positive_float, default=0.05,
                   help="a group is near zero when its RMS is below this fraction of its RMS "
                        "before sparsity training (default 0.05)")
    g.add_argument("--reg-groups", choices=["all", "pruned"], default="all",
                   help="which channel groups the regularizer acts on: all (default), or "
                        "pruned = only those the pruning target removes (chosen once, by a dry "
                        "run of the target on the input model), so that exactly they are "
                        "driven to zero; needs a params or MACs target")
    g.add_argument("--lam-target-share", type=options.fraction, metavar="S",
                   help="raise schedule: the share of groups to drive near zero (default: "
                        "measured by a dry run of the pruning target on the input model)")
    g.add_argument("--fade", choices=FADES, default="off",
                   help="off (default), or linear: fade the channel groups the params or MACs "
                        "target removes (chosen once, by a dry run of the target on the input "
                        "model) linearly to exactly zero during sparsity training, so that "
                        "pruning them changes no output; the regularizer still acts (lam may "
                        "be 0)")
    options.add_fade_end(g)
    g.add_argument("--sparse-epochs", type=options.nonneg_int, default=20,
                   help="epochs of sparsity training (default 20; 0: prune the input as is)")
    g.add_argument("--sparse-lr", type=options.positive_float, default=0.01,
                   help="peak learning rate of sparsity training (default 0.01)")
    g = p.add_argument_group("pruning (exactly one of)")
    g.add_argument("--threshold", type=options.nonneg_float, metavar="T",
                   help="remove every channel group scoring below T (the score of --group-score)")
    g.add_argument("--target-params-reduction", type=options.fraction, metavar="R",
                   help="remove the lowest-scoring groups until params fall by at least the "
                        "fraction R in [0, 1)")
    g.add_argument("--target-macs-reduction", type=options.fraction, metavar="R",
                   help="remove the lowest-scoring groups until MACs fall by at least the "
                        "fraction R in [0, 1)")
    g.add_argument("--auto-tolerance", type=options.nonneg_float, metavar="T",
                   help="choose the params reduction on the validation split: the largest of "
                        "5 %%, 10 %%, ..., 95 %% whose pruned copy of the sparse model (not "
                        "fine-tuned) keeps val top-1 within T percentage points of the input "
                        "run's (the scan stops at the first that does not)")
    g = p.add_argument_group("ranking")
    g.add_argument("--group-score", choices=SCORES, default="layer_rms",
                   help="what ranks the channel groups: layer_rms (default: each layer's "
                        "slice divided by that layer's mean channel RMS first, so layers of "
                        "different weight scale compare fairly) or rms (raw RMS norm)")
    g.add_argument("--round-to", type=options.positive_int, metavar="N",
                   help="keep every pruned layer's width a multiple of N channels (e.g. 8: "
                        "onnxruntime computes convolutions in blocks of 8 or 16 channels, so "
                        "odd widths cost time without accuracy; default: exact widths)")
    g.add_argument("--max-layer-reduction", type=options.fraction_open, metavar="F",
                   help="remove at most the fraction F in (0, 1] of any layer's channels "
                        "(every layer keeps ceil((1 - F) * width)), so no residual stream or "
                        "inner width collapses to a few channels (default: no cap)")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--finetune-epochs", type=options.nonneg_int, default=20,
                   help="epochs of fine-tuning after pruning, no regularizer (default 20)")
    g.add_argument("--finetune-lr", type=options.positive_float, default=0.01,
                   help="peak learning rate of fine-tuning (default 0.01)")
    options.add_data(p, required=False)
    options.add_train(p, epochs=None, lr=None, title="training (both stages)",
                      seed_of="both trainings")
    options.add_output(p)
    options.add_config(p)
    p.set_defaults(func=run)


def vacl_config(args: argparse.Namespace) -> VaclConfig:
    """The :class:`VaclConfig` of the command's options, checked (UserError names the first
    bad one)."""
    fields = {k: getattr(args, k) for k in (
        "lam", "beta", "form", "include_bn", "include_consumers", "reg_groups", "lam_schedule",
        "lam_growth", "lam_max", "near_zero", "lam_target_share", "fade", "fade_end",
        "sparse_epochs", "sparse_lr", *RULES, "group_score", "round_to", "max_layer_reduction", "finetune_epochs",
        "finetune_lr", "epoch_size")}
    for rule in RULES:
        if fields[rule] is not None:
            fields[rule] = float(fields[rule])
    return VaclConfig(**fields, train=common.train_config(args, prefix="sparse-")).validate()


def prune_target(args: argparse.Namespace) -> dict[str, float]:
    """The one pruning rule given, as keyword arguments of :func:`resprune.vacl.prune`."""
    return VaclConfig(**{k: getattr(args, k, None) for k in RULES}).rule()


def run(args: argparse.Namespace) -> int:
    started = time.time()
    start = common.open_input(args, "vacl")
    model = start.model
    config = vacl_config(args)
    if "auto_tolerance" in config.rule() and len(start.bundle.val) == 0:
        raise UserError(f"--auto-tolerance chooses on the validation split, which is empty "
                        f"(--val-fraction {args.val_fraction}); raise --val-fraction or give "
                        "a target")
    teacher = common.distillation(args, args.run)
    common.check_teacher(teacher, model)
    return common.run_pipeline(args, start, "vacl", run_pipeline, config, teacher, started,
                               terminal_text)


def terminal_text(summary: dict[str, Any], out: Path) -> str:
    pr = summary["prune"]
    rule = (f"RMS < {pr['threshold']:g}" if pr["mode"] == "threshold" else
            f"target {'params' if pr['mode'] == 'params' else 'MACs'} reduction "
            f"{100 * pr['target_reduction']:.2f} %"
            + ("" if pr["target_reached"] else " (not reached)")
            + (f", chosen on val with --auto-tolerance {pr['auto']['tolerance']:g}"
               if pr.get("auto") else ""))
    lines = [common.metrics_table([("input", summary["base"]), ("vacl", summary)]), "",
             f"removed {pr['groups_removed']} of {pr['groups_total']} channel groups "
             f"({pr['removed_by_kind'].get('cross', 0)} cross-layer, "
             f"{pr['removed_by_kind'].get('filter', 0)} filter; {rule}): params "
             f"{fmt_count(pr['params_before'])} -> {fmt_count(pr['params_after'])} "
             f"({summary['params_removed_pct']:.2f} % removed), MACs "
             f"{summary['macs_removed_pct']:.2f} % removed",
             f"test top-1: input {fmt_acc(summary['base']['top1'])}, after sparsity training "
             f"{fmt_acc(summary['top1_after_sparse'])}, pruned "
             f"{fmt_acc(summary['top1_before_finetune'])}, fine-tuned {fmt_acc(summary['top1'])}",
             f"run directory: {out} (report: {out / 'report.md'})"]
    return "\n".join(lines)

