"""``resprune implode``: Network Implosion of a trained run (erase whole residual units).

The command is a thin shell around :func:`resprune.implosion.implode`: it loads the input
run's model, reproduces the run's validation split (data options default to the run's), runs
the score -> erase -> retrain -> accept/roll back loop with step checkpoints in ``--out``, and
writes the usual run files. ``summary.json`` (kind ``implode``) holds, besides the common
fields (``params``, ``macs``, ``depth``, ``top1``, ``val_top1``, ``cpu_latency_ms``, ...):

- ``base``: the input model measured on the same splits (``run``, ``params``, ``macs``,
  ``depth``, ``top1``, ``val_top1``, ``cpu_latency_ms``);
- ``start``: the net the loop starts from (gates added and adapted if the input had none):
  ``val_top1`` is the acceptance baseline; ``gates_added`` counts the new gates;
- ``erased_units``: ``{"name", "priority", "step"}`` in the order the units were erased;
- ``layers_removed_pct`` = 100 * (base depth - depth) / base depth, ``params_removed_pct``,
  ``macs_removed_pct``;
- ``epochs``: every training epoch the loop spent (adapt + retrainings, rolled-back ones
  included, + final), split in ``epochs_detail``;
- ``stop_reason`` and ``steps``: the library's step history, each step with
  ``cpu_latency_ms_64`` (CPU latency at batch 64 of the architecture after that step);
- ``units``: every residual unit of the input in network order (``erasable``), for the plot;
  ``gates``: the surviving gates' values before they were folded into the BNs;
  ``step_latency``: how the per-step latency was timed (batch, warm-up, repeats,
  threads; the nets of all steps interleaved).

Per-step latency is measured after the loop, from the architecture each step produced (input
spec + that step's erasures, gates folded): latency depends on the architecture, not on the
weight values, so this costs the loop nothing and survives ``--resume`` (the library keeps
only the last accepted step's weights).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..implosion import (
    ERASE_MODES,
    SCORE_METHODS,
    ImplosionConfig,
    erasable_units,
    erase_units,
    fold_gates,
    implode,
)
from ..implosion.gates import is_erasable, residual_units, unit_weight_layers
from ..measure import depth
from ..models import build
from ..report import fmt_acc, pct_removed
from ..report.implosion import write_report
from ..runs import write_summary
from . import common, options

# Per-step latency: the nets of all steps are timed together, interleaved (each round times
# every net once, alternating the order; resprune.measure.compare.time_models), so a burst of
# load from other processes hits all steps alike; the median of each net's runs is kept.
STEP_LATENCY_BATCH = 64
STEP_LATENCY_WARMUP = 1
STEP_LATENCY_REPEATS = 5


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

class _StderrLog:
    """Show the loop's step messages on stderr while the command runs."""

    def __enter__(self):
        self.logger = logging.getLogger("resprune.implosion")
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(logging.Formatter("implode: %(message)s"))
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def run(args: argparse.Namespace) -> int:
    started = time.time()
    start = common.open_input(args, "implode")
    model, spec, summary_in = start.model, start.spec, start.summary
    bundle, device, shape = start.bundle, start.device, start.input_shape
    check_options(args, model)
    config = implosion_config(args)
    teacher = common.distillation(args, args.run)
    common.check_teacher(teacher, model)
    if len(bundle.val) == 0:
        raise UserError(f"the validation split is empty (--val-fraction {args.val_fraction}); "
                        "implode accepts or rolls back every step on it")
    out = common.open_output(args, start)
    n_val = len(bundle.val)
    common.log(f"implode: validation split of {n_val} images: one image = "
               f"{100 / n_val:.3g} points; --tolerance {args.tolerance:g} points = "
               f"{int(args.tolerance * n_val / 100 + 1e-9)} images")
    train_loader, val_loader, test_loader = common.make_loaders(bundle, args, device)
    units = [{"name": n, "erasable": is_erasable(u),
              "weight_layers": unit_weight_layers(u)} for n, u in residual_units(model)]
    new_gates = sum(1 for n, u in residual_units(model)
                    if is_erasable(u) and getattr(u, "gate", None) is None)
    base = common.measure(model, shape, {"val": val_loader, "test": test_loader}, device,
                          args.precision)
    base = {"run": str(args.run), **{k: base[k] for k in (
        "params", "macs", "depth", "top1", "top5", "val_top1", "cpu_latency_ms")}}
    with _StderrLog():
        result = implode(model, train_loader, val_loader, config, out, resume=bool(args.resume),
                         input_shape=shape, progress=not args.no_progress, distill=teacher)
    final = common.measure(result.model, shape, {"val": val_loader, "test": test_loader},
                           device, args.precision)
    summary = common.base_summary("implode", summary_in.get("model") or spec["arch"], args,
                                  bundle, shape, started)
    summary.update(final)
    summary.update(implosion_fields(result, base, units, spec, shape, new_gates))
    write_summary(out, summary)
    write_report(out, summary)
    common.emit(args, summary, terminal_text(summary, out))
    return 0


def implosion_fields(result, base: dict[str, Any], units: list[dict[str, Any]],
                     spec: dict[str, Any], shape, gates_added: int) -> dict[str, Any]:
    """The implode-specific summary fields (see the module docstring).

    ``spec`` is the input model's architecture; ``gates_added`` the number of gates the loop
    had to add (0 for an input trained with --priority-gates).
    """
    history = [dict(h) for h in result.history]
    erased_so_far: list[str] = []
    erased_after: list[list[str]] = [[]]  # the start net, then the net after each step
    for h in history:
        erased_after.append(erased_so_far + h["erased"])
        if h["accepted"]:
            erased_so_far = erased_so_far + h["erased"]
    lat = arch_latencies(spec, erased_after, shape)
    start = {**result.baseline, "gates_added": gates_added, "cpu_latency_ms_64": lat[0]}
    for h, ms in zip(history, lat[1:]):
        h["cpu_latency_ms_64"] = ms
    erased = [{"name": n, "priority": h["priorities"][n], "step": h["step"]}
              for h in history if h["accepted"] for n in h["erased"]]
    detail = {"adapt": int(result.adapt_epochs),
              "retrain": int(sum(h["epochs"] for h in history)),
              "final": int(result.final["epochs"])}
    final_depth = int(result.final["depth"])
    return {
        "base": base, "start": start, "erased_units": erased,
        "layers_removed_pct": pct_removed(base["depth"], final_depth),
        "params_removed_pct": pct_removed(base["params"], result.final["params"]),
        "macs_removed_pct": pct_removed(base["macs"], result.final["macs"]),
        "epochs": sum(detail.values()), "epochs_detail": detail,
        "stop_reason": result.stop_reason, "steps": history, "units": units,
        "gates": result.gates,
        "step_latency": {"batch": STEP_LATENCY_BATCH, "warmup": STEP_LATENCY_WARMUP,
                         "repeats": STEP_LATENCY_REPEATS, "interleaved": True,
                         "threads": torch.get_num_threads()},
    }


def arch_latencies(spec: dict[str, Any], erased: list[list[str]], shape) -> list[float]:
    """CPU ms at batch 64 of ``spec`` with each list of units removed (gates folded).

    Latency depends on the architecture, not on the weight values, so each net is rebuilt
    from the spec; identical architectures are timed once.
    """
    from ..measure.compare import time_models

    keys = [",".join(sorted(e)) for e in erased]
    nets: dict[str, nn.Module] = {}
    for key, names in zip(keys, erased):
        if key not in nets:
            net = build(spec)
            erase_units(net, names)
            fold_gates(net)  # as deployed: no gate multiply
            nets[key] = net
    rows, _ = time_models(nets, shape, batch_sizes=(STEP_LATENCY_BATCH,), runtimes=("eager",),
                          devices=["cpu"], warmup=STEP_LATENCY_WARMUP,
                          repeats=STEP_LATENCY_REPEATS)
    return [round(rows[0]["ms"][k], 4) for k in keys]


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
