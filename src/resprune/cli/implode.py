"""``resprune implode``: Network Implosion of a trained run (erase whole residual units).

The command parses its options into an :class:`resprune.implosion.ImplosionConfig`, opens the
input run and its data (data options default to the run's, so its validation split is
reproduced), and calls :func:`resprune.implosion.run_implosion`, which runs the score -> erase
-> retrain -> accept/roll back loop with step checkpoints in ``--out`` and writes the run
files (``summary.json`` fields: :mod:`resprune.implosion.summary`); then it prints the result.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import UserError
from ..implosion import (
    ImplosionConfig,
    erasable_units,
    run_implosion,
)
from ..measure import depth
from ..report import fmt_acc
from . import common, options


def add_parser(subs) -> None:
    p = subs.add_parser(
        "implode", help="Network Implosion: erase whole residual units while accuracy holds",
        description="Depth pruning of a trained run: every erasable residual unit (identity "
                    "shortcut) carries a priority gate; the lowest-priority units are erased "
                    "(branch deleted, shortcut kept), the net is retrained at a lowered "
                    "learning rate, and the step is kept only if validation top-1 stays within "
                    "--tolerance of the start net's, else it is rolled back (and the loop stops "
                    "after --patience rejections in a row). "
                    "Data options default to the input run's, so decisions use the same "
                    "validation split the run was trained with; the test set is only reported.")
    p.add_argument("run", metavar="RUN", help="input run directory (model.safetensors + "
                   "arch.json, e.g. written by 'resprune train')")
    options.add_fields(p.add_argument_group("implosion"), ImplosionConfig)
    options.add_data(p, required=False)
    options.add_train(p, epochs=False, title="training (every retraining)",
                      seed_of="every retraining", helps={
                          "warmup_epochs": "not used: retrainings start at the lowered rate "
                                           "(leave at 0)"})
    options.add_output(p)
    options.add_config(p)
    p.set_defaults(func=run)


# -- input checks -------------------------------------------------------------------------

def check_options(args: argparse.Namespace, model: nn.Module) -> None:
    """Options that need the model, checked before anything is written."""
    if args.warmup_epochs:
        raise UserError("--warmup-epochs does not apply to implode: every retraining starts at "
                        "the lowered --retrain-lr; leave it at 0")
    if not erasable_units(model):
        raise UserError(f"the model in {args.run} has no erasable residual unit left (every "
                        "remaining unit changes resolution or width)")
    d = depth(model)
    if args.target_depth is not None and args.target_depth > d:
        raise UserError(f"--target-depth {args.target_depth} is above the depth of {args.run} "
                        f"({d} weight layers); choose a smaller target")


def implosion_config(args: argparse.Namespace) -> ImplosionConfig:
    return ImplosionConfig(**options.field_values(args, ImplosionConfig), seed=args.seed,
                           train=common.train_config(args, prefix="retrain-")).validate()


# -- the command ----------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    started = time.time()
    start = common.open_input(args, "implode")
    model = start.model
    check_options(args, model)
    config = implosion_config(args)
    teacher = common.distillation(args, args.run)
    common.check_teacher(teacher, model)
    if len(start.bundle.val) == 0:
        raise UserError(f"the validation split is empty (--val-fraction {args.val_fraction}); "
                        "implode accepts or rolls back every step on it")
    return common.run_pipeline(args, start, "implode", run_implosion, config, teacher, started,
                               terminal_text)


def terminal_text(summary: dict[str, Any], out: Path) -> str:
    erased = summary["erased_units"]
    lines = [common.metrics_table([("input", summary["base"]), ("imploded", summary)]), "",
             f"erased {len(erased)} unit(s) in {len(summary['steps'])} step(s): "
             f"{', '.join(e['name'] for e in erased) or 'none'} (stop: {summary['stop_reason']})",
             f"weight layers removed {summary['layers_removed_pct']:.2f} %, params "
             f"{summary['params_removed_pct']:.2f} %, MACs {summary['macs_removed_pct']:.2f} %; "
             f"acceptance baseline val top-1 {fmt_acc(summary['start']['val_top1'])}",
             f"run directory: {out} (report: {out / 'report.md'})"]
    return "\n".join(lines)
