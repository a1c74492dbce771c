"""``resprune compress``: depth (Network Implosion) and width (VACL) in one resumable pipeline.

The stages are the real commands. Each runs as that command's ``run(args)`` on its own run
directory ``OUT/stages/<i>-<name>/``, its input being the previous stage's directory:

- ``train`` (only with ``--model NAME`` instead of RUN): the zoo model from scratch, with
  ``--priority-gates`` when implode is among the stages;
- ``implode``: Network Implosion (:mod:`resprune.cli.implode`), by accuracy (``--tolerance``,
  ``--target-depth``, ``--max-steps``);
- ``vacl``: VACL (:mod:`resprune.cli.vacl`), pruning to the share of an overall budget still
  missing (``--target-params-reduction`` / ``--target-macs-reduction``), by ``--threshold``, or,
  without a budget, by ``--auto-tolerance`` (default: ``--tolerance``) on the validation split;
- ``finetune``: ``train --init <previous stage>`` for ``--finetune-final-epochs`` at
  ``--finetune-final-lr``.

``--stages`` picks the order of implode / vacl / finetune (each at most once). The parser
re-uses the argparse actions of the stage commands, so every stage option is defined once,
in its command. A stage whose directory holds ``summary.json`` is done and skipped; an
unfinished one is continued with its own ``--resume``; so ``compress --resume`` continues a
pipeline killed between or within stages. The final model is saved into ``OUT``
(``model.safetensors`` + ``arch.json``): a normal run directory.

``summary.json`` (kind ``compress``) has the common fields of the final model (``params``,
``macs``, ``depth``, ``top1``, ``top5``, ``val_top1``, ``cpu_latency_ms``, ``input_shape``,
``data``, ``config``), ``epochs`` and ``seconds`` summed over the stages, and:

- ``base``: the compress input (or the trained base) on the same splits: ``run``, ``params``,
  ``macs``, ``depth``, ``top1``, ``top5``, ``val_top1``, ``cpu_latency_ms``;
- ``stages``: one record per stage in order: ``name``, ``dir`` (relative to OUT),
  ``params``, ``macs``, ``depth``, ``top1``, ``val_top1``, ``params_removed_pct`` /
  ``macs_removed_pct`` (vs the previous stage, or the base for the first), ``epochs``,
  ``seconds`` (+ ``layers_removed`` and ``stop_reason`` for implode, ``rule`` for vacl);
- ``params_removed_pct``, ``macs_removed_pct``, ``layers_removed_pct``: the final model vs
  ``base``;
- ``budget``: how much the pipeline was asked to remove (``mode``: ``params`` / ``macs`` /
  ``threshold`` / ``auto`` / ``none``; ``target_reduction`` and ``reached`` for a target).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..checkpoint import load, save
from ..errors import UserError
from ..measure import count_macs, count_params
from ..report import fmt_acc, fmt_pct, pct_removed
from ..report.compress import write_report
from ..runs import SUMMARY_FILE, input_shape_of, prepare_out, read_summary, write_summary
from ..train import STATE_FILE as TRAIN_STATE_FILE
from . import common, options
from .config import resolved
from .evaluate import inherit_data_options

STAGES = ("implode", "vacl", "finetune")
DEFAULT_STAGES = "implode,vacl,finetune"
STAGES_DIR = "stages"
# handled by compress itself (RUN is the pipeline's input; --init/--arch make no sense here)
OWN_DESTS = {"help", "run", "init", "arch", "config"}
MODEL_OPTIONS = ("shortcut", "width", "cardinality", "base_width")
RULES = (("target_params_reduction", "--target-params-reduction"),
         ("target_macs_reduction", "--target-macs-reduction"),
         ("threshold", "--threshold"), ("auto_tolerance", "--auto-tolerance"))
BASE_KEYS = ("params", "macs", "depth", "top1", "top5", "val_top1", "cpu_latency_ms")
STAGE_KEYS = ("params", "macs", "depth", "top1", "val_top1", "cpu_latency_ms")
# where the stage commands' option groups go in compress --help
GROUP_TITLES = {
    "model": "base model (with --model: trained from scratch first)",
    "data": "data",
    "training": "training (every stage)",
    "output": "output",
    "implosion": "implode stage (Network Implosion)",
    "sparsity training (VACL regularizer)": "vacl stage: sparsity training",
    "pruning (exactly one of)": "budget (at most one of)",
    "ranking": "vacl stage: ranking",
    "fine-tuning": "vacl stage: fine-tuning",
}


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



def _stage_parsers() -> dict[str, argparse.ArgumentParser]:
    """Throwaway parsers of the stage commands, whose actions compress adopts."""
    from . import implode, train, vacl

    scratch = argparse.ArgumentParser(add_help=False)
    subs = scratch.add_subparsers()
    for mod in (train, implode, vacl):
        mod.add_parser(subs)
    return dict(subs.choices)


def _adopt(p: argparse.ArgumentParser, groups: dict[str, Any]) -> None:
    """Add every stage option compress does not define itself, once, to ``p``'s groups."""
    have = {a.dest for a in p._actions} | OWN_DESTS
    for name, sub in _stage_parsers().items():
        for group in sub._action_groups:
            for action in group._group_actions:
                if action.dest in have:
                    continue
                title = GROUP_TITLES.get(group.title or "", f"{name}: {group.title}")
                if title not in groups:
                    groups[title] = p.add_argument_group(title)
                groups[title]._add_action(action)
                have.add(action.dest)
    by_dest = {a.dest: a for a in p._actions}
    by_dest["data"].required = False  # RUN brings its own data options
    by_dest["seed"].default = None
    by_dest["seed"].help = ("seed of the validation split and of every training (default: "
                            "with --model 0, with RUN the run's seed)")
    by_dest["epochs"].help = "epochs of the base training (--model only; default 30)"
    by_dest["lr"].help = "peak learning rate of the base training (--model only; default 0.1)"
    by_dest["warmup_epochs"].help = ("linear warm-up epochs of the base training (--model "
                                     "only; 0); the stages that start from trained weights "
                                     "never warm up")
    by_dest["auto_tolerance"].help = (
        "without a target: VACL prunes the largest share of params whose pruned copy keeps "
        "val top-1 within T points of the vacl stage's input (default: --tolerance)")


def add_parser(subs) -> None:
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
    g.add_argument("--finetune-final-epochs", type=options.nonneg_int, default=10,
                   help="epochs of the finetune stage (default 10)")
    g.add_argument("--finetune-final-lr", type=options.positive_float, default=0.01,
                   help="peak learning rate of the finetune stage (default 0.01)")
    b = p.add_argument_group("budget (at most one of)")
    b.add_argument("--target-params-reduction", type=options.fraction, metavar="R",
                   help="remove at least the fraction R in [0, 1) of the input's params in "
                        "all: implosion goes by accuracy, VACL removes the rest")
    b.add_argument("--target-macs-reduction", type=options.fraction, metavar="R",
                   help="the same for MACs")
    _adopt(p, {"pipeline": g, "budget (at most one of)": b})
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
    given = [flag for dest, flag in RULES if getattr(args, dest, None) is not None]
    if len(given) > 1:
        raise UserError(f"give at most one of {', '.join(f for _, f in RULES)} (got "
                        f"{', '.join(given)})")
    stages = list(args.stages)
    if given and "vacl" not in stages:
        raise UserError(f"{given[0]} applies to the vacl stage, which --stages "
                        f"{','.join(stages)} leaves out; add vacl or drop the option")
    return (["train"] if args.model is not None else []) + stages


def budget(args: argparse.Namespace) -> dict[str, Any]:
    for metric in ("params", "macs"):
        r = getattr(args, f"target_{metric}_reduction")
        if r is not None:
            return {"mode": metric, "target_reduction": float(r)}
    if "vacl" not in args.stages:
        return {"mode": "none"}
    if args.threshold is not None:
        return {"mode": "threshold", "threshold": float(args.threshold)}
    return {"mode": "auto", "auto_tolerance": float(args.auto_tolerance)}


def vacl_share(target: float, base: float, current: float) -> float:
    """The fraction of ``current`` to remove so that ``1 - target`` of ``base`` is left.

    ``r = 1 - (1 - target) * base / current``, clamped at 0 (earlier stages already removed
    enough: VACL removes nothing). Below 1 for any ``target`` < 1.
    """
    if current <= 0:
        return 0.0
    return max(0.0, 1.0 - (1.0 - target) * base / current)


# -- stages -------------------------------------------------------------------------------------

def _counts(run_dir: Path) -> dict[str, int]:
    """Params and MACs of the model saved in ``run_dir`` (for the budget split)."""
    from ..checkpoint import load_spec

    shape = input_shape_of(run_dir, load_spec(run_dir))
    model = load(run_dir)
    return {"params": count_params(model), "macs": count_macs(model, tuple(shape))}


def stage_modes(where: Path, name: str) -> tuple[bool, bool]:
    """``(resume, overwrite)`` for a stage directory without ``summary.json``.

    Empty or absent: a fresh start. Started and resumable: ``--resume``. Started but killed
    before the stage could checkpoint anything it can resume from (no ``command.json``, or a
    training with no ``train_state.pt`` yet): started over (its directory is compress's own).
    """
    if not where.is_dir() or not any(where.iterdir()):
        return False, False
    if not (where / "command.json").is_file():
        return False, True
    if name in ("train", "finetune") and not (where / TRAIN_STATE_FILE).is_file():
        return False, True
    return True, False


def stage_args(args: argparse.Namespace, name: str, source: Path | None, where: Path,
               stages: list[str], rule: dict[str, Any]) -> argparse.Namespace:
    """The stage command's arguments: compress's, with input, output and stage rules set."""
    ns = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "_parser"})
    ns.command = "train" if name in ("train", "finetune") else name
    ns.out, ns.json, ns.config = str(where), False, None
    ns.resume, ns.overwrite = stage_modes(where, name)
    ns.run = ns.init = ns.arch = None
    if getattr(args, "distill_from", None) == "input" and name != "train":
        # every stage learns from the pipeline's input, not from the previous stage
        ns.distill_from = str(args.run) if args.run is not None else str(
            where.parent / "1-train")
    if name != "train":  # stages from trained weights at a low lr: no warm-up
        ns.warmup_epochs = 0.0
    if name == "train":
        ns.priority_gates = bool(args.priority_gates or "implode" in stages)
    elif name == "finetune":
        ns.model, ns.init, ns.priority_gates = None, str(source), False
        for k in MODEL_OPTIONS:
            setattr(ns, k, None)
        ns.epochs, ns.lr = args.finetune_final_epochs, args.finetune_final_lr
    else:
        ns.run = str(source)
    if name == "vacl":
        for dest, _ in RULES:
            setattr(ns, dest, None)
        for k, v in rule.items():
            setattr(ns, k, v)
    return ns


def vacl_rule(args: argparse.Namespace, base: dict[str, int], source: Path) -> dict[str, Any]:
    """The vacl stage's one pruning rule (its options), from compress's budget."""
    b = budget(args)
    if b["mode"] in ("params", "macs"):
        now = _counts(source)
        share = vacl_share(b["target_reduction"], base[b["mode"]], now[b["mode"]])
        return {f"target_{b['mode']}_reduction": share}
    if b["mode"] == "threshold":
        return {"threshold": b["threshold"]}
    return {"auto_tolerance": b["auto_tolerance"]}


def _run_stage(name: str, ns: argparse.Namespace) -> None:
    from . import implode, train, vacl

    module = {"train": train, "finetune": train, "implode": implode, "vacl": vacl}[name]
    ns.func = module.run
    with contextlib.redirect_stdout(sys.stderr):  # stdout is compress's own (--json)
        module.run(ns)


# -- the command --------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
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
    if "vacl" in stages and all(getattr(args, d) is None for d, _ in RULES):
        args.auto_tolerance = float(args.tolerance)
    if not resuming:
        out, _ = prepare_out(args.out, overwrite=args.overwrite, source=args.run)
        common.record_command(args, out, False)

    source = Path(args.run) if args.run is not None else None
    base_counts = _counts(source) if source is not None else None
    done: list[tuple[str, Path, dict[str, Any]]] = []
    for i, name in enumerate(stages, 1):
        where = out / STAGES_DIR / f"{i}-{name}"
        if (where / SUMMARY_FILE).is_file():
            common.log(f"compress: stage {i}/{len(stages)} {name}: done ({where})")
        else:
            rule = vacl_rule(args, base_counts, source) if name == "vacl" else {}
            ns = stage_args(args, name, source, where, stages, rule)
            common.log(f"compress: stage {i}/{len(stages)} {name} -> {where}"
                       + (" (resuming)" if ns.resume else ""))
            _run_stage(name, ns)
        done.append((name, where, read_summary(where)))
        if name == "train":
            base_counts = _counts(where)
        source = where

    final = load(source)
    save(final, out, metadata={"kind": "compress"})
    summary = compress_summary(args, out, done)
    write_summary(out, summary)
    write_report(out, summary)
    common.emit(args, summary, terminal_text(summary, out))
    return 0


def _base(args: argparse.Namespace, done: list[tuple[str, Path, dict[str, Any]]]
          ) -> dict[str, Any]:
    """The compress input on the stages' splits: the train stage, or the first stage's base."""
    name, where, s = done[0]
    if name == "train":
        return {"run": str(where), **{k: s.get(k) for k in BASE_KEYS}}
    if isinstance(s.get("base"), dict):  # implode and vacl measure their input
        return {"run": str(args.run), **{k: s["base"].get(k) for k in BASE_KEYS}}
    return _measure_input(args)


def _measure_input(args: argparse.Namespace) -> dict[str, Any]:
    """The input run measured on its splits (when the first stage, finetune, does not)."""
    from ..checkpoint import load_spec
    from ..data import input_shape

    device = common.resolve_device(args.device)
    bundle = common.load_data(args, load_spec(args.run).get("preprocess"))
    _, val, test = common.make_loaders(bundle, args, device)
    m = common.measure(load(args.run, device=device), input_shape(bundle),
                       {"val": val, "test": test}, device, args.precision)
    return {"run": str(args.run), **{k: m.get(k) for k in BASE_KEYS}}


def stage_record(name: str, where: Path, out: Path, s: dict[str, Any],
                 prev: dict[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = {"name": name, "dir": where.relative_to(out).as_posix(),
                           **{k: s.get(k) for k in STAGE_KEYS},
                           "params_removed_pct": pct_removed(prev["params"], s["params"]),
                           "macs_removed_pct": pct_removed(prev["macs"], s["macs"]),
                           "epochs": int(s.get("epochs") or 0),
                           "seconds": float(s.get("seconds") or 0.0)}
    if name == "implode":
        rec["layers_removed"] = int(prev["depth"]) - int(s["depth"])
        rec["stop_reason"] = s.get("stop_reason")
    if name == "vacl":
        pr = s.get("prune") or {}
        rec["rule"] = {k: pr.get(k) for k in ("mode", "threshold", "target_reduction",
                                               "target_reached")}
        if pr.get("auto"):
            rec["rule"]["auto_tolerance"] = pr["auto"]["tolerance"]
    return rec


def compress_summary(args: argparse.Namespace, out: Path,
                     done: list[tuple[str, Path, dict[str, Any]]]) -> dict[str, Any]:
    base = _base(args, done)
    records, prev = [], base
    for name, where, s in done:
        records.append(stage_record(name, where, out, s, prev))
        prev = s
    last = done[-1][2]
    b = budget(args)
    if b["mode"] in ("params", "macs"):
        b["reached"] = pct_removed(base[b["mode"]], last[b["mode"]]) >= (
            100 * b["target_reduction"] - 1e-9)
    summary = {"kind": "compress", "model": done[0][2].get("model"), "resprune": __version__,
               "input_shape": last.get("input_shape"), "data": last.get("data"),
               **{k: last.get(k) for k in BASE_KEYS},
               "epochs": sum(r["epochs"] for r in records),
               "seconds": round(sum(r["seconds"] for r in records), 2),
               "config": resolved(args), "base": base, "stages": records,
               "params_removed_pct": pct_removed(base["params"], last["params"]),
               "macs_removed_pct": pct_removed(base["macs"], last["macs"]),
               "layers_removed_pct": pct_removed(base["depth"], last["depth"]),
               "budget": b}
    return summary


def terminal_text(summary: dict[str, Any], out: Path) -> str:
    rows = [("base" + (" (trained)" if summary["stages"][0]["name"] == "train" else ""),
             summary["base"])]
    rows += [(f"after {r['name']}", r) for r in summary["stages"] if r["name"] != "train"]
    b = summary["budget"]
    target = (f"; target {b['mode']} reduction {fmt_pct(100 * b['target_reduction'])} "
              + ("reached" if b["reached"] else "NOT reached")) if "reached" in b else ""
    return "\n".join([
        common.metrics_table(rows), "",
        f"removed {fmt_pct(summary['params_removed_pct'])} of params, "
        f"{fmt_pct(summary['macs_removed_pct'])} of MACs, "
        f"{fmt_pct(summary['layers_removed_pct'])} of weight layers{target}; test top-1 "
        f"{fmt_acc(summary['base'].get('top1'))} -> {fmt_acc(summary.get('top1'))}",
        f"run directory: {out} (report: {out / 'report.md'}; stages in {out / STAGES_DIR})"])
