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
    ERASE_MODES,
    SCORE_METHODS,
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
    g = p.add_argument_group("implosion")
    g.add_argument("--score", choices=SCORE_METHODS, default="gate",
                   help="priority term: gate = |w| (default), norm = mean ||w F(x)|| over "
                        "training batches, gate_bn = |w| * ||gamma of the branch's last BN||, "
                        "random = ablation baseline")
    g.add_argument("--per-step", type=options.positive_int, default=1,
                   help="units erased per step (default 1)")
    g.add_argument("--retrain-epochs", type=options.nonneg_int, default=10,
                   help="retraining epochs after each erasure (default 10; 0: no retraining)")
    g.add_argument("--retrain-lr", type=options.positive_float, default=0.01,
                   help="learning rate of every retraining, lowered from training's, no "
                        "warm-up (default 0.01)")
    g.add_argument("--tolerance", type=options.nonneg_float, default=0.0,
                   help="accept a step when val top-1 >= start net's val top-1 minus this many "
                        "percentage points (default 0)")
    g.add_argument("--patience", type=options.positive_int, default=1,
                   help="stop after this many rejected steps in a row; after a rejection the "
                        "next-lowest priorities are tried (default 1: stop at the first)")
    g.add_argument("--screen", type=options.nonneg_int, default=0, metavar="N",
                   help="erase each of the N lowest-priority units alone, score the validation "
                        "loss without training, and erase the --per-step cheapest (default 0: "
                        "by priority alone)")
    g.add_argument("--screen-batches", type=options.positive_int, default=4,
                   help="validation batches each screened candidate is scored on (default 4)")
    g.add_argument("--erase", choices=ERASE_MODES, default="cut",
                   help="cut (default): replace a step's units by identities, then retrain; "
                        "fade: retrain while their priority gates fall linearly to exactly "
                        "zero, then replace them (no output changes), so the net adapts "
                        "gradually")
    options.add_fade_end(g)
    g.add_argument("--target-depth", type=options.positive_int, metavar="LAYERS",
                   help="stop once the net has at most this many weight layers (default: none)")
    g.add_argument("--max-steps", type=options.positive_int,
                   help="stop after this many steps (default: none)")
    g.add_argument("--final-epochs", type=options.nonneg_int, default=0,
                   help="longer retraining of the final net (default 0)")
    g.add_argument("--final-lr", type=options.positive_float,
                   help="learning rate of the final retraining (default: --retrain-lr)")
    g.add_argument("--adapt-epochs", type=options.nonneg_int, default=5,
                   help="when the input has no priority gates: they are added (w = 1, logits "
                        "unchanged) and trained this many epochs before step 1 (default 5)")
    g.add_argument("--adapt-lr", type=options.positive_float,
                   help="learning rate of the gate adaptation (default: --retrain-lr)")
    g.add_argument("--score-batches", type=options.positive_int, default=4,
                   help="training batches the norm score reads (default 4)")
    options.add_data(p, required=False)
    options.add_train(p, epochs=None, lr=None, title="training (every retraining)",
                      seed_of="every retraining")
    for action in p._actions:
        if action.dest == "warmup_epochs":
            action.help = "not used: retrainings start at the lowered rate (leave at 0)"
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
    return ImplosionConfig(
        score=args.score, per_step=args.per_step, retrain_epochs=args.retrain_epochs,
        retrain_lr=args.retrain_lr, tolerance=float(args.tolerance),
        patience=args.patience, screen=args.screen, screen_batches=args.screen_batches,
        erase=args.erase, fade_end=args.fade_end,
        target_depth=args.target_depth, max_steps=args.max_steps,
        final_epochs=args.final_epochs, final_lr=args.final_lr,
        adapt_epochs=args.adapt_epochs, adapt_lr=args.adapt_lr,
        score_batches=args.score_batches, seed=args.seed,
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
