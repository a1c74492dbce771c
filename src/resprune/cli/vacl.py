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
from ..report import fmt_acc, fmt_count, text_table
from ..report.tables import targets_of
from ..vacl import VaclConfig, run_pipeline
from ..vacl.config import RULES
from . import common, options

RULES_GROUP = "pruning (exactly one of, or params and MACs together)"
METRIC = {"params": "params", "macs": "MACs"}
# the command's option groups of VaclConfig fields (compress shows them as its vacl stage's)
GROUPS = {
    "sparsity training (VACL regularizer)": (
        "lam", "beta", "form", "include_bn", "include_consumers", "lam_schedule",
        "lam_growth", "lam_max", "near_zero", "reg_groups", "lam_target_share", "fade",
        "fade_end", "sparse_epochs", "sparse_lr"),
    RULES_GROUP: RULES,
    "ranking": ("group_score", "taylor_batches", "cost", "round_to", "max_layer_reduction",
                "latency_runtime", "latency_batch", "latency_check"),
    "reconstruction (after pruning)": ("reconstruct", "reconstruct_ridge"),
    "fine-tuning": ("finetune_epochs", "finetune_lr", "prune_steps", "step_epochs"),
}


def add_parser(subs) -> None:
    p = subs.add_parser(
        "vacl", help="VACL: width pruning of cross-layer channel groups",
        description="Width pruning of a trained run: sparsity-train with the variance-aware "
                    "cross-layer group regularizer, remove the channel groups with the lowest "
                    "score (--group-score; by --threshold or down to a target reduction of "
                    "params or MACs), then fine-tune without the regularizer. Data options "
                    "default to the input run's, so its validation split is reproduced; the "
                    "test set is only reported. Give exactly one of --threshold, "
                    "--target-params-reduction, --target-macs-reduction, "
                    "--target-latency-reduction, --target-latency and --auto-tolerance, or "
                    "both --target-params-reduction and --target-macs-reduction (pruning "
                    "stops once both are reached).")
    p.add_argument("run", metavar="RUN", help="input run directory (model.safetensors + "
                   "arch.json, e.g. written by 'resprune train')")
    for title, names in GROUPS.items():
        options.add_fields(p.add_argument_group(title), VaclConfig, names)
    options.add_data(p, required=False)
    options.add_train(p, epochs=False, title="training (both stages)",
                      seed_of="both trainings")
    options.add_output(p, required=False)
    add_plan(p, "print what the pruning rule removes from RUN (params, MACs, channel groups) "
                "under each ranking cost (none, params, macs), ranked as RUN is, and exit: "
                "trains and writes nothing, so --out is not needed")
    options.add_config(p)
    p.set_defaults(func=run)


def add_plan(p: argparse.ArgumentParser, help: str) -> None:
    """``--plan`` and ``--plan-recalibrate`` (shared by ``vacl`` and ``compress``)."""
    p.add_argument("--plan", action="store_true", help=help)
    p.add_argument("--plan-recalibrate", type=options.positive_int, metavar="N", default=None,
                   help="with --plan: also re-estimate each pruned model's BatchNorm "
                        "statistics on N training images and score it on the validation "
                        "split (val top-1 right after pruning; without re-estimation every "
                        "deep cut scores about chance). About a minute per ranking for "
                        "ResNet-56 with N 2048 on two CPU threads")


def vacl_config(args: argparse.Namespace) -> VaclConfig:
    """The :class:`VaclConfig` of the command's options, checked (UserError names the first
    bad one)."""
    fields = options.field_values(args, VaclConfig)
    fields["epoch_size"] = args.epoch_size
    return VaclConfig(**fields, train=common.train_config(args, prefix="sparse-")).validate()


def run(args: argparse.Namespace) -> int:
    started = time.time()
    check_plan_args(args)
    if args.plan:
        return plan(args)
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


def plan(args: argparse.Namespace) -> int:
    """``--plan``: the library's :func:`resprune.vacl.plan` on the input run, printed."""
    from ..vacl import plan as make_plan

    start = common.open_input(args, "vacl")
    config = vacl_config(args)
    rows = make_plan(start.model, common.make_loaders(start.bundle, args, start.device),
                     config, input_shape=start.input_shape,
                     recalibrate=args.plan_recalibrate or 0)
    common.emit(args, rows, plan_text(rows, config))
    return 0


def check_plan_args(args: argparse.Namespace) -> None:
    """``--plan`` writes nothing, so it takes no output options; without it ``--out`` is
    required (shared by ``vacl`` and ``compress``)."""
    if args.plan_recalibrate is not None and not args.plan:
        raise UserError("--plan-recalibrate scores the rows of a plan: add --plan")
    if args.plan and (args.out or args.resume or args.overwrite):
        raise UserError("--plan trains and writes nothing: drop --out, --resume and "
                        "--overwrite")
    if not args.plan and not args.out:
        raise UserError("--out is required (or --plan, which writes nothing)")


def plan_text(rows: list[dict[str, Any]], config: VaclConfig) -> str:
    rule = " ".join(f"--{key.replace('_', '-')} {value:g}"
                    for key, value in config.rule().items())
    body = [[r["cost"], f"{100 * r['params_reduction']:.2f} %",
             f"{100 * r['macs_reduction']:.2f} %",
             f"{fmt_count(r['params_before'])} -> {fmt_count(r['params_after'])}",
             f"{fmt_count(r['macs_before'])} -> {fmt_count(r['macs_after'])}",
             f"{r['groups_removed']} of {r['groups_total']}",
             r["removed_by_kind"].get("cross", 0),
             "yes" if r["target_reached"] else "no"] for r in rows]
    head = ["--cost", "params removed", "MACs removed", "params", "MACs", "groups removed",
            "cross-layer", "target reached"]
    scored = rows and "val_top1" in rows[0]
    if scored:
        head.append("val top-1 (BN re-estimated)")
        for line, r in zip(body, rows):
            line.append(fmt_acc(r["val_top1"]))
    table = text_table(head, body)
    note = ("" if config.group_score == "taylor" or len(rows) == 1 else
            f"\n--cost params / macs divide the score by what a group saves; "
            f"{config.group_score} averages over a group's layers, so the cost alone decides "
            "(docs/vacl.md): rank with --group-score taylor")
    if scored:
        note += (f"\nval top-1: each pruned model on the validation split after BatchNorm "
                 f"re-estimation on {rows[0]['recalibrated_on']} training images, before any "
                 "fine-tuning")
    return (f"plan: {rule}, --group-score {config.group_score}, input ranked as it is (no "
            f"sparsity training)\n{table}{note}")


def _latency_word(pr: dict[str, Any]) -> str:
    lat = pr.get("latency") or {}
    if lat.get("check") == "measured":
        return (f"measured latency (got {100 * lat['measured_reduction']:.2f} %: "
                f"{lat['input_ms']:.2f} -> {lat['pruned_ms']:.2f} ms)")
    return "predicted latency"


def terminal_text(summary: dict[str, Any], out: Path) -> str:
    pr = summary["prune"]
    rule = (f"RMS < {pr['threshold']:g}" if pr["mode"] == "threshold" else
            "target " + ", ".join(f"{METRIC.get(m, _latency_word(pr))} reduction "
                                  f"{100 * v:.2f} %" for m, v in targets_of(pr).items())
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
             f"{fmt_acc(summary['top1_after_sparse'])}, pruned"
             f"{' and re-fitted' if pr.get('reconstruction') else ''} "
             f"{fmt_acc(summary['top1_before_finetune'])}, fine-tuned {fmt_acc(summary['top1'])}",
             f"run directory: {out} (report: {out / 'report.md'})"]
    return "\n".join(lines)

