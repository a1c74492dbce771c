"""``resprune vacl``: VACL width pruning of a trained run (cross-layer channel groups).

The command runs the pipeline of :mod:`resprune.vacl` on the model of an input run, in three
stages, each checkpointed in ``--out`` so that a run killed at any point and continued with
``--resume`` ends with the same weights, bit for bit on the CPU, as an uninterrupted one:

1. **sparsity training** (``stages/sparse/``): ``--sparse-epochs`` from the input weights at
   ``--sparse-lr`` with the VACL regularizer ``lam * R`` as a Trainer loss term (weight decay
   as usual). The Trainer checkpoints every epoch and resumes exactly.
2. **pruning** (``stages/pruned/``: the pruned model and ``prune_report.json``): groups are
   scored by their RMS norm and removed by ``--threshold`` or down to a target reduction of
   params or MACs (one global ranking, at least one channel kept per layer), physically.
   ``--auto-tolerance T`` chooses the params target from validation accuracy instead (see
   :mod:`resprune.vacl.select`): the largest candidate reduction whose pruned copy, not
   fine-tuned, keeps val top-1 within T points of the input run's.
3. **fine-tuning** (``stages/finetune/``): ``--finetune-epochs`` at ``--finetune-lr``
   without the regularizer. The result is written to ``--out`` (``model.safetensors`` +
   ``arch.json``, a plain, smaller ResNet that ``resprune.load`` reads).

Each stage starts from the previous stage's weights *as read back from disk*, in a fresh and
in a resumed run alike, so both take the same path. ``pipeline_state.json`` records the phase
reached and what was measured on the way. No decision uses the test set: the pruning rule is
the user's (threshold or target), or, with ``--auto-tolerance``, chosen on the validation split.

``summary.json`` (kind ``vacl``) holds, besides the common fields (``params``, ``macs``,
``depth``, ``top1``, ``top5``, ``val_top1``, ``cpu_latency_ms``, ``input_shape``, ``data``,
``config``, ``seconds``):

- ``base``: the input model on the same splits (``run``, ``params``, ``macs``, ``depth``,
  ``top1``, ``top5``, ``val_top1``, ``cpu_latency_ms``);
- ``params_removed_pct`` = 100 * (base params - params) / base params, ``macs_removed_pct``;
- ``top1_after_sparse`` / ``val_top1_after_sparse`` (after stage 1),
  ``top1_before_finetune`` / ``val_top1_before_finetune`` (the pruned model);
- ``widths``: ``{conv layer: [out channels before, after]}`` in network order;
- ``prune``: the essentials of the library's prune report (mode, threshold / target, whether
  the target was reached, group counts removed by kind, params and MACs before / after) and
  ``cutoff``: the highest RMS score removed (the threshold, for ``--threshold``); with
  ``--auto-tolerance``, ``auto``: the candidates tried and the choice
  (:func:`resprune.vacl.select.choose_reduction`);
- ``group_rms``: a log-scale histogram of the groups' RMS scores before and after sparsity
  training (see :func:`resprune.report.vacl.rms_histogram`);
- ``epochs`` (sparse + fine-tune) and ``epochs_detail``; ``seconds`` is the training and
  pruning time of the stages (a resumed run counts every stage once).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load, save
from ..errors import UserError
from ..implosion.store import fingerprint
from ..io import atomic_write_json, atomic_write_text, read_json
from ..measure import evaluate
from ..report import fmt_acc, fmt_count, pct_removed
from ..report.vacl import rms_histogram, write_report
from ..runs import write_summary
from ..train import FADES, Fade, Trainer
from ..train import STATE_FILE as TRAIN_STATE_FILE
from ..vacl import (
    FORMS,
    LAM_SCHEDULES,
    SCORES,
    LamSchedule,
    Regularizer,
    group_scores,
    group_slices,
    near_zero_share,
    prune,
)
from . import common, options

STATE_FILE = "pipeline_state.json"
STATE_FORMAT = 1
STAGES_DIR = "stages"
PRUNE_REPORT = "prune_report.json"
# the parts of vacl.prune's report that go into summary.json (the full one is in stages/pruned)
PRUNE_KEYS = ("mode", "score", "threshold", "target_reduction", "target_reached", "groups_total",
              "groups_by_kind", "groups_fixed", "groups_removed", "removed_by_kind",
              "units_skipped_to_keep_layers", "params_before", "params_after",
              "params_reduction", "macs_before", "macs_after", "macs_reduction")
TARGETS = (("threshold", "--threshold"), ("target_params_reduction", "--target-params-reduction"),
           ("target_macs_reduction", "--target-macs-reduction"),
           ("auto_tolerance", "--auto-tolerance"))
BASE_KEYS = ("params", "macs", "depth", "top1", "top5", "val_top1", "cpu_latency_ms")


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


# -- checks -----------------------------------------------------------------------------------

def prune_target(args: argparse.Namespace) -> dict[str, float]:
    """The one pruning rule given, as keyword arguments of :func:`resprune.vacl.prune`."""
    given = [(dest, flag) for dest, flag in TARGETS if getattr(args, dest, None) is not None]
    if len(given) != 1:
        names = ", ".join(flag for _, flag in given) or "none"
        raise UserError("give exactly one of --threshold, --target-params-reduction, "
                        f"--target-macs-reduction and --auto-tolerance (got {names})")
    dest, _ = given[0]
    return {dest: float(getattr(args, dest))}


# -- pipeline state -----------------------------------------------------------------------------

def stage_dir(out: Path, name: str) -> Path:
    return out / STAGES_DIR / name


def read_state(out: Path) -> dict[str, Any] | None:
    path = out / STATE_FILE
    if not path.is_file():
        return None
    state = read_json(path, "VACL pipeline state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get(
            "kind") != "vacl":
        raise UserError(f"{path} is not a VACL pipeline state this resprune can read; start "
                        "a new run without --resume")
    return state


def write_state(out: Path, state: dict[str, Any]) -> None:
    atomic_write_json(out / STATE_FILE, state)


def _accuracy(model: nn.Module, loaders: dict[str, Any], precision: str) -> dict[str, Any]:
    """top1 / top5 (test) and val_top1 of ``model``; None for an empty split."""
    out: dict[str, Any] = {"top1": None, "top5": None, "val_top1": None}
    for split, loader in loaders.items():
        if loader is None or loader.num_samples == 0:
            continue
        r = evaluate(model, loader, precision=precision)
        if split == "test":
            out["top1"], out["top5"] = r["top1"], r["top5"]
        else:
            out["val_top1"] = r["top1"]
    return out


# -- the stages -------------------------------------------------------------------------------

def _fit(model: nn.Module, loaders: dict[str, Any], cfg, run_dir: Path, progress: bool,
         loss_terms=(), distill=None, callbacks=()) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train in ``run_dir``; continue its ``train_state.pt`` when one exists."""
    trainer = Trainer(model, loaders["train"], loaders["val"], cfg, run_dir=run_dir,
                      loss_terms=list(loss_terms), progress=progress, distill=distill,
                      callbacks=list(callbacks))
    history = trainer.fit(resume=(run_dir / TRAIN_STATE_FILE).is_file())
    return trainer.model, history


def _sparse_stage(model: nn.Module, reg: Regularizer, loaders: dict[str, Any], cfg, out: Path,
                  progress: bool, distill=None, callbacks=()) -> list[dict[str, Any]]:
    """Stage 1: sparsity training; the trained weights end in ``stages/sparse``."""
    where = stage_dir(out, "sparse")
    model, history = _fit(model, loaders, cfg, where, progress, loss_terms=[reg],
                          distill=distill, callbacks=callbacks)
    save(model, where, metadata={"kind": "vacl-sparse"})
    return history


def _prune_stage(out: Path, shape, reg: Regularizer, target: dict[str, float],
                 rms_after: list[float], score: str) -> dict[str, Any]:
    """Stage 2: prune the sparse-trained weights; the result ends in ``stages/pruned``."""
    model = load(stage_dir(out, "sparse"))
    report = prune(model, shape, groups=reg.groups, include_bn=reg.include_bn,
                   include_consumers=reg.include_consumers, score=score, **target)
    where = stage_dir(out, "pruned")
    save(model, where, metadata={"kind": "vacl-pruned"})
    atomic_write_json(where / PRUNE_REPORT, report)
    index = {g.name: g.index for g in reg.groups}
    removed = [rms_after[index[n]] for n in report["removed_groups"]]
    cutoff = report["threshold"] if report["mode"] == "threshold" else (
        max(removed) if removed else None)
    return {"prune": {**{k: report[k] for k in PRUNE_KEYS}, "cutoff": cutoff},
            "widths": {n: [report["widths_before"][n], report["widths_after"][n]]
                       for n in report["widths_before"]}}


def _finetune_stage(out: Path, loaders: dict[str, Any], cfg,
                    progress: bool, distill=None) -> list[dict[str, Any]]:
    """Stage 3: fine-tune the pruned model without the regularizer; save it into ``out``."""
    model, history = _fit(load(stage_dir(out, "pruned")), loaders, cfg,
                          stage_dir(out, "finetune"), progress, distill=distill)
    save(model, out, metadata={"kind": "vacl"})
    return history


def _cleanup(out: Path) -> None:
    """A finished run keeps the stage weights and logs, not the optimizer states."""
    for name in ("sparse", "finetune"):
        (stage_dir(out, name) / TRAIN_STATE_FILE).unlink(missing_ok=True)


def _lam_schedule(args: argparse.Namespace, reg: Regularizer, model: nn.Module, shape,
                 target: dict[str, float], state: dict[str, Any]) -> LamSchedule:
    """The lambda schedule of the sparsity stage; its target share is kept in ``state``."""
    import copy

    if "rms_start" not in state:
        state["rms_start"] = group_scores(model, reg.groups, reg.include_bn,
                                          reg.include_consumers, "rms").tolist()
    pruned_only = getattr(args, "reg_groups", "all") == "pruned"
    share = args.lam_target_share
    fading = getattr(args, "fade", "off") != "off"
    need_dry = pruned_only or fading or (args.lam_schedule == "raise" and share is None)
    if need_dry and "dry_run_groups" not in state:
        if "auto_tolerance" in target or "threshold" in target:
            raise UserError("--fade, --reg-groups pruned and --lam-schedule raise (without "
                            "--lam-target-share) need a params or MACs target: the groups "
                            "to drive to zero come from a dry run of it")
        dry = prune(copy.deepcopy(model), shape, include_bn=reg.include_bn,
                    include_consumers=reg.include_consumers, score=args.group_score,
                    **target)
        state["dry_run_groups"] = dry["removed_groups"]
        state["lam_target_share"] = dry["groups_removed"] / max(dry["groups_total"], 1)
    if pruned_only:
        reg.select(state["dry_run_groups"])
        state["lam_target_share"] = share = share if share is not None else 0.9
    elif args.lam_schedule == "raise" and share is None:
        share = state["lam_target_share"]
    return LamSchedule(reg, args.lam_schedule, args.lam_growth, share, args.near_zero,
                       getattr(args, "lam_max", None))


# -- the command ------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    started = time.time()
    start = common.open_input(args, "vacl")
    resuming = bool(args.resume)  # after open_input: a run killed in its first write restarts
    model, spec, summary_in = start.model, start.spec, start.summary
    bundle, device, shape = start.bundle, start.device, start.input_shape
    target = prune_target(args)
    cfg_sparse = common.train_config(args, prefix="sparse-")
    cfg_finetune = common.train_config(args, prefix="finetune-")
    if getattr(args, "fade", "off") != "off" and not any(k.startswith("target_")
                                                         for k in target):
        raise UserError("--fade needs --target-params-reduction or --target-macs-reduction: "
                        "the groups to fade come from a dry run of the target")
    if "auto_tolerance" in target and len(bundle.val) == 0:
        raise UserError(f"--auto-tolerance chooses on the validation split, which is empty "
                        f"(--val-fraction {args.val_fraction}); raise --val-fraction or give "
                        "a target")
    teacher = common.distillation(args, args.run)
    common.check_teacher(teacher, model)
    reg = Regularizer(model, form=args.form, beta=args.beta, lam=args.lam,
                      include_bn=args.include_bn, include_consumers=args.include_consumers,
                      input_shape=shape)
    out = common.open_output(args, start)
    train_loader, val_loader, test_loader = common.make_loaders(bundle, args, device)
    loaders = {"train": train_loader, "val": val_loader, "test": test_loader}
    evals = {"val": val_loader, "test": test_loader}
    progress = not args.no_progress

    state = read_state(out) if resuming else None
    fp = fingerprint(model)
    if state is None:
        base = common.measure(model, shape, evals, device, args.precision)
        state = {"format": STATE_FORMAT, "kind": "vacl", "phase": "sparse",
                 "input": {"run": str(args.run), "fingerprint": fp},
                 "base": {"run": str(args.run), **{k: base[k] for k in BASE_KEYS}},
                 "groups": reg.groups.counts(),
                 "rms_before": group_scores(model, reg.groups, reg.include_bn,
                                            reg.include_consumers, args.group_score).tolist()}
        write_state(out, state)
    elif state["input"]["fingerprint"] != fp:
        raise UserError(f"the model in {args.run} changed since {out} was started; resume "
                        "with the same input run, or start a new run with --overwrite")

    if state["phase"] == "sparse":
        common.log(f"vacl: sparsity training, {cfg_sparse.epochs} epoch(s) at lr "
                   f"{cfg_sparse.lr} ({reg!r})")
        callbacks: list[Any] = [_lam_schedule(args, reg, model, shape, target, state)]
        if getattr(args, "fade", "off") != "off":
            callbacks.append(Fade(group_slices(model, reg.groups, state["dry_run_groups"]),
                                  end=args.fade_end))
            common.log(f"vacl: fading {len(state['dry_run_groups'])} channel groups to zero "
                       f"over the first {100 * args.fade_end:.0f} % of sparsity training")
        write_state(out, state)
        history = _sparse_stage(model, reg, loaders, cfg_sparse, out, progress, teacher,
                                callbacks)
        sparse = load(stage_dir(out, "sparse"), device=device)
        state["near_zero_share"] = (history[-1].get("near_zero_share") if history else
                                    near_zero_share(sparse, reg, torch.as_tensor(
                                        state["rms_start"], dtype=torch.float64),
                                        args.near_zero))
        state.update(phase="prune", sparse_history=history,
                     after_sparse=_accuracy(sparse, evals, args.precision),
                     rms_after=group_scores(sparse, reg.groups, reg.include_bn,
                                            reg.include_consumers, args.group_score).tolist())
        write_state(out, state)
    if state["phase"] == "prune":
        common.log(f"vacl: pruning ({', '.join(f'{k}={v}' for k, v in target.items())})")
        t0 = time.perf_counter()
        auto = _auto_target(out, shape, reg, val_loader, target, args.group_score,
                            state["base"]["val_top1"], args.precision, device)
        rule = target if auto is None else {"target_params_reduction": auto["chosen"]}
        state.update(_prune_stage(out, shape, reg, rule, state["rms_after"], args.group_score))
        if auto is not None:
            state["prune"]["auto"] = auto
        pruned = load(stage_dir(out, "pruned"), device=device)
        state.update(phase="finetune", prune_seconds=round(time.perf_counter() - t0, 3),
                     before_finetune=_accuracy(pruned, evals, args.precision))
        write_state(out, state)
        _warn_target(state["prune"])
    if state["phase"] == "finetune":
        common.log(f"vacl: fine-tuning, {cfg_finetune.epochs} epoch(s) at lr "
                   f"{cfg_finetune.lr}")
        history = _finetune_stage(out, loaders, cfg_finetune, progress, teacher)
        state.update(phase="done", finetune_history=history)
        write_state(out, state)
        _cleanup(out)

    final_model = load(out, device=device)
    final = common.measure(final_model, shape, evals, device, args.precision)
    summary = common.base_summary("vacl", summary_in.get("model") or spec["arch"], args,
                                  bundle, shape, started)
    summary.update(final)
    summary.update(vacl_fields(state))
    history = combined_history(state)
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    write_summary(out, summary)
    write_report(out, summary, history)
    common.emit(args, summary, terminal_text(summary, out))
    return 0


def _auto_target(out: Path, shape, reg: Regularizer, val_loader, target: dict[str, float],
                 score: str, reference: float, precision: str, device
                 ) -> dict[str, Any] | None:
    """--auto-tolerance: the params reduction chosen on the validation split (else None).

    Candidates are held to the input net's val top-1 (``reference``), not the sparse one's.
    """
    if "auto_tolerance" not in target:
        return None
    from ..vacl.select import choose_reduction

    auto = choose_reduction(load(stage_dir(out, "sparse"), device=device), shape, val_loader,
                            target["auto_tolerance"], groups=reg.groups,
                            include_bn=reg.include_bn,
                            include_consumers=reg.include_consumers, score=score,
                            reference=reference, precision=precision)
    common.log(f"vacl: auto: {len(auto['candidates'])} candidate(s) tried on the validation "
               f"split; params target {100 * auto['chosen']:.0f} % (stop: {auto['stop']})")
    return auto


def _warn_target(pr: dict[str, Any]) -> None:
    if not pr["target_reached"]:
        what = "params" if pr["mode"] == "params" else "MACs"
        common.log(f"vacl: warning: the target {what} reduction {pr['target_reduction']:g} was "
                   f"not reached ({100 * pr[pr['mode'] + '_reduction']:.2f} % removed): every "
                   "remaining channel group is needed to keep at least one channel per layer")


def combined_history(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Both trainings' epoch records, numbered through (``stage``, ``stage_epoch`` added)."""
    out = []
    for stage in ("sparse", "finetune"):
        for r in state.get(f"{stage}_history") or []:
            out.append({**r, "epoch": len(out) + 1, "stage": stage, "stage_epoch": r["epoch"]})
    return out


def vacl_fields(state: dict[str, Any]) -> dict[str, Any]:
    """The vacl-specific summary fields (see the module docstring) from the pipeline state."""
    base, pr = state["base"], state["prune"]
    sparse_h, ft_h = state.get("sparse_history") or [], state.get("finetune_history") or []
    detail = {"sparse": len(sparse_h), "finetune": len(ft_h)}
    seconds = sum(r.get("seconds") or 0.0 for r in sparse_h + ft_h) + state.get(
        "prune_seconds", 0.0)
    return {
        "base": base,
        "params_removed_pct": pct_removed(base["params"], pr["params_after"]),
        "macs_removed_pct": pct_removed(base["macs"], pr["macs_after"]),
        "top1_after_sparse": state["after_sparse"]["top1"],
        "val_top1_after_sparse": state["after_sparse"]["val_top1"],
        "top1_before_finetune": state["before_finetune"]["top1"],
        "val_top1_before_finetune": state["before_finetune"]["val_top1"],
        "widths": state["widths"],
        "prune": pr,
        "groups": state["groups"],
        "group_rms": rms_histogram(state["rms_before"], state["rms_after"], pr["cutoff"]),
        "epochs": sum(detail.values()),
        "epochs_detail": detail,
        "seconds": round(seconds, 2),
        "cpu_threads": torch.get_num_threads(),
        "near_zero_share": state.get("near_zero_share"),
        "lam_target_share": state.get("lam_target_share"),
        "lam_final": next((r["lam"] for r in reversed(sparse_h) if "lam" in r), None),
    }


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

