"""The VACL pipeline in the library: sparsity training -> pruning -> fine-tuning, resumable.

:func:`run_pipeline` runs the three stages on a model and writes a run directory, the same
one ``resprune vacl`` writes (the command only parses options and prints)::

    import resprune
    from resprune.data import load_dataset
    from resprune.vacl import VaclConfig, run_pipeline

    model = resprune.load("runs/resnet56")
    data = load_dataset("cifar10", "data/cifar10", val_fraction=0.1)
    result = run_pipeline(model, data, VaclConfig(target_params_reduction=0.5,
                                                  sparse_epochs=10, finetune_epochs=10),
                          out="runs/resnet56-vacl")
    result.model, result.summary["params_removed_pct"]

Stages, each checkpointed in ``out`` so that a run killed at any point and continued with
``resume=True`` ends with the same weights, bit for bit on the CPU, as an uninterrupted one:

1. **sparsity training** (``stages/sparse/``): ``sparse_epochs`` at ``sparse_lr`` with the
   VACL regularizer ``lam * R`` as a Trainer loss term, the lambda schedule and, with
   ``fade``, the fade of the groups the target removes (:mod:`resprune.vacl.fade`);
2. **pruning** (``stages/pruned/``: the pruned model and ``prune_report.json``): groups ranked
   by ``group_score`` and removed by the rule, physically; ``auto_tolerance`` chooses the
   params target on the validation split (:mod:`resprune.vacl.select`);
3. **fine-tuning** (``stages/finetune/``): ``finetune_epochs`` at ``finetune_lr``, no
   regularizer. The result is saved into ``out`` (``model.safetensors`` + ``arch.json``).

Each stage starts from the previous stage's weights as read back from disk, in a fresh and a
resumed run alike. ``pipeline_state.json`` records the phase reached and what was measured;
``summary.json`` (kind ``vacl``), ``metrics.jsonl`` and ``report.md`` are written at the end
(fields: :func:`resprune.vacl.summary.vacl_fields`). No decision reads the test loader.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__, distributed
from ..checkpoint import load, save
from ..data import resolve_loaders
from ..errors import UserError
from ..io import atomic_write_json, atomic_write_text, remove
from ..measure import evaluate
from ..measure import summary as measures
from ..measure._device import resolve_device
from ..models import spec_of
from ..report.tables import fmt_targets, targets_of
from ..report.vacl import write_report
from ..runstate import comparable, config_json, fingerprint, read_state, write_state
from ..train import STATE_FILE as TRAIN_STATE_FILE
from ..train import Fade, Trainer, reconstruct
from ..train.reconstruction import describe, summarize
from ..train.trainer import RESUME_FREE_OPTIONS
from .config import VaclConfig
from .fade import group_slices
from .prune import prune
from .regularizer import Regularizer, group_scores
from .schedule import LamSchedule, near_zero_share
from .summary import BASE_KEYS, PRUNE_KEYS, combined_history, vacl_fields

log = logging.getLogger("resprune.vacl")

KIND = "vacl"
STATE_FORMAT = 1
STAGES_DIR = "stages"
PRUNE_REPORT = "prune_report.json"
# what state["steps"] keeps of each step's prune report (with prune_steps > 1)
STEP_KEYS = ("target_reached", "params_after", "macs_after", "groups_total", "groups_by_kind",
             "groups_removed", "removed_by_kind", "reconstruction")


@dataclass
class VaclResult:
    """What :func:`run_pipeline` produced: the pruned, fine-tuned ``model`` and the
    ``summary`` written to ``summary.json``."""

    model: nn.Module
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None


def stage_dir(out: Path, name: str) -> Path:
    return Path(out) / STAGES_DIR / name


def run_pipeline(model: nn.Module, data: Any, config: VaclConfig | None = None, *,
                 out: str | Path, resume: bool = False, distill=None, progress: bool = True,
                 input_shape: tuple[int, ...] | None = None, source: str | Path | None = None,
                 summary_extra: dict[str, Any] | None = None) -> VaclResult:
    """Sparsity-train, prune and fine-tune ``model`` (trained in place); see the module doc.

    ``data``: a :class:`resprune.data.DataBundle` (loaders are built from ``config.train``'s
    batch size, device and seed and ``config.epoch_size``) or a :class:`resprune.data.Loaders`
    ``(train, val, test)`` of your own (``test`` may be None; it is only reported). ``out``: the
    run directory (created; a directory holding a VACL run needs ``resume=True``).
    ``distill``: a :class:`resprune.train.Distillation` for both trainings. ``input_shape``
    ``[C, H, W]`` defaults to the data's. ``source`` (e.g. the input run directory) is recorded
    as ``base.run``. ``summary_extra`` is merged into ``summary.json`` (the CLI records its
    options and data there).
    """
    config = (config or VaclConfig()).validate()
    if config.cost != "none" and config.group_score != "taylor":
        log.warning("warning: --cost %s divides the group score by the %s a group saves; "
                    "%s is an average over the group's layers, so the ranking follows the "
                    "cost alone and empties the costliest residual streams first "
                    "(docs/vacl.md); use --group-score taylor", config.cost,
                    {"macs": "MACs"}.get(config.cost, config.cost),
                    config.group_score)
    target = config.rule()
    started = time.time()
    t = config.train
    loaders, shape, data_info = resolve_loaders(
        data, batch_size=t.batch_size, device=resolve_device(t.device), seed=t.seed,
        channels_last=t.channels_last, epoch_size=config.epoch_size, input_shape=input_shape)
    if "auto_tolerance" in target and getattr(loaders.val, "num_samples", 1) == 0:
        raise UserError("--auto-tolerance chooses on the validation split, which is empty; "
                        "hold out a validation split or give a target")
    out = Path(out)
    device = resolve_device(config.train.device)
    reg = Regularizer(model, form=config.form, beta=config.beta, lam=config.lam,
                      include_bn=config.include_bn, include_consumers=config.include_consumers,
                      input_shape=shape)
    loader_map = {"train": loaders.train, "val": loaders.val, "test": loaders.test}
    evals = {"val": loaders.val, "test": loaders.test}
    precision = config.train.precision
    scorer = _Scorer(reg, config, loaders.train)
    state = _open(out, model, config, resume, shape, evals, scorer, device,
                  None if source is None else str(source))
    table = _latency_table(out, model, shape, config)

    if state["phase"] == "sparse":
        callbacks = _sparse_callbacks(config, reg, model, shape, target, state, table)
        write_state(out, state)
        log.info("sparsity training, %d epoch(s) at lr %g (%r)", config.sparse_epochs,
                 config.sparse_lr, reg)
        history = _fit(model, loader_map, config.stage("sparse"), stage_dir(out, "sparse"),
                       progress, loss_terms=[reg], distill=distill, callbacks=callbacks)
        save(model, stage_dir(out, "sparse"), metadata={"kind": "vacl-sparse"})
        sparse = load(stage_dir(out, "sparse"), device=device)
        state["near_zero_share"] = (history[-1].get("near_zero_share") if history else
                                    near_zero_share(sparse, reg, torch.as_tensor(
                                        state["rms_start"], dtype=torch.float64),
                                        config.near_zero))
        state.update(phase="prune", sparse_history=history,
                     after_sparse=measures.accuracy(sparse, evals, precision),
                     rms_after=(state["rms_before"]  # no sparsity training: same weights
                                if fingerprint(sparse) == state["input"]["fingerprint"]
                                else scorer(sparse)))
        write_state(out, state)
    steps = config.prune_steps
    while state["phase"] in ("prune", "finetune"):
        k = state.get("step", 1)
        last = k == steps
        if state["phase"] == "prune":
            log.info("pruning%s (%s)", f", step {k} of {steps}" if steps > 1 else "",
                     ", ".join(f"{n}={v}" for n, v in target.items()))
            t0 = time.perf_counter()
            auto = None if k > 1 else _auto_target(out, shape, reg, loaders.val, target, config,
                                                   state["base"]["val_top1"], device,
                                                   state["rms_after"])
            rule = target if auto is None else {"target_params_reduction": auto["chosen"]}
            src, step_reg, scores, now = _step_input(out, k, steps, state, reg, config, shape,
                                                     loaders.train)
            if steps > 1:  # a params or MACs target (validated), never auto
                rule = step_rule(target, k, steps, state["base"], now)
            pruned_at = _step_dir(out, "pruned", k, steps)
            got = _prune(src, pruned_at, shape, step_reg, rule, scores, config, table,
                         loaders.train, loaders.val, precision)
            if auto is not None:
                got["prune"]["auto"] = auto
            pruned = load(pruned_at, device=device)
            after = measures.accuracy(pruned, evals, precision)
            seconds = round(time.perf_counter() - t0, 3) + state.get("prune_seconds", 0.0)
            if steps > 1:
                state.setdefault("steps", []).append(
                    {"step": k, "rule": rule, "before_finetune": after, "widths": got["widths"],
                     **{n: got["prune"][n] for n in STEP_KEYS}})
            if last:
                if steps > 1:
                    got = _overall(got, state, target)
                state.update(got)
            state.update(phase="finetune", prune_seconds=seconds, before_finetune=after)
            write_state(out, state)
            _warn_target(got["prune"])
        if state["phase"] == "finetune":
            cfg = config.stage("finetune" if last else "step")
            log.info("fine-tuning%s, %d epoch(s) at lr %g",
                     f" after step {k} of {steps}" if steps > 1 else "", cfg.epochs, cfg.lr)
            tuned = load(_step_dir(out, "pruned", k, steps))
            where = _step_dir(out, "finetune", k, steps)
            history = _fit(tuned, loader_map, cfg, where, progress, distill=distill)
            save(tuned, out if last else where, metadata={"kind": "vacl" if last else
                                                          "vacl-step"})
            if last:
                state.update(phase="done", finetune_history=history)
            else:
                state["steps"][-1]["finetune_history"] = history
                state.update(phase="prune", step=k + 1)
            write_state(out, state)
            remove(where / TRAIN_STATE_FILE)
    remove(stage_dir(out, "sparse") / TRAIN_STATE_FILE)

    final_model = load(out, device=device)
    summary = {"kind": KIND, "model": spec_of(final_model)["arch"], "resprune": __version__,
               "world_size": distributed.world_size(),
               "input_shape": list(shape), "data": data_info,
               "seconds": round(time.time() - started, 2), "config": config_json(config)}
    summary.update(summary_extra or {})
    summary.update(measures.measure_model(final_model, shape, evals, device=device,
                                          precision=precision))
    summary.update(vacl_fields(state))
    history = combined_history(state)
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    atomic_write_json(out / "summary.json", summary)
    write_report(out, summary, history)
    return VaclResult(model=final_model, summary=summary, history=history, run_dir=out)


# -- set-up ---------------------------------------------------------------------------------

def _open(out: Path, model: nn.Module, config: VaclConfig, resume: bool, shape, evals,
          scorer: _Scorer, device, source: str | None) -> dict[str, Any]:
    """The pipeline state: a new one (base measured), or the resumed run's, checked."""
    fp = fingerprint(model)
    state = read_state(out, KIND)
    if state is not None and not resume:
        raise UserError(f"{out} already holds a VACL run; pass resume=True (--resume) to "
                        "continue it or choose a new run directory")
    if state is None:
        out.mkdir(parents=True, exist_ok=True)
        base = measures.measure_model(model, shape, evals, device=device,
                                      precision=config.train.precision)
        state = {"format": STATE_FORMAT, "kind": KIND, "phase": "sparse",
                 "input": {"run": source, "fingerprint": fp},
                 "config": config_json(config),
                 "base": {"run": source, **{k: base.get(k) for k in BASE_KEYS}},
                 "groups": scorer.reg.groups.counts(),
                 "rms_before": scorer(model)}
        write_state(out, state)
        return state
    if state["input"]["fingerprint"] != fp:
        raise UserError(f"the input model changed since {out} was started; resume with the "
                        "same input, or start a new run")
    if "config" in state and _comparable(state["config"]) != _comparable(config_json(config)):
        raise UserError(f"{out} holds a VACL run with different options; resume with the same "
                        "options or use a new run directory")
    return state


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return comparable(config, config_json(VaclConfig()), RESUME_FREE_OPTIONS)


class _Scorer:
    """The groups' scores under ``config.group_score`` (taylor reads training batches).

    The scores of the input (``rms_before``) and of the sparse model (``rms_after``) are kept in
    the pipeline state and handed to every pruning of those weights (dry run, auto choice,
    pruning), so a data-dependent score is computed once per model, also in a resumed run.
    """

    def __init__(self, reg: Regularizer, config: VaclConfig, train_loader: Any):
        self.reg, self.config, self.loader = reg, config, train_loader

    def __call__(self, model: nn.Module) -> list[float]:
        return group_scores(model, self.reg.groups, self.reg.include_bn,
                            self.reg.include_consumers, self.config.group_score,
                            loader=self.loader, batches=self.config.taylor_batches,
                            seed=self.config.train.seed).tolist()


def _scores(model: nn.Module, reg: Regularizer, score: str) -> list[float]:
    """Weight-only scores (``rms``, ``layer_rms``) of ``model``'s groups."""
    return group_scores(model, reg.groups, reg.include_bn, reg.include_consumers,
                        score).tolist()


# -- the stages -----------------------------------------------------------------------------

def _fit(model: nn.Module, loaders: dict[str, Any], cfg, run_dir: Path, progress: bool,
         loss_terms=(), distill=None, callbacks=()) -> list[dict[str, Any]]:
    """Train in ``run_dir``; continue its ``train_state.pt`` when one exists."""
    trainer = Trainer(model, loaders["train"], loaders["val"], cfg, run_dir=run_dir,
                      loss_terms=list(loss_terms), progress=progress, distill=distill,
                      callbacks=list(callbacks))
    return trainer.fit(resume=(run_dir / TRAIN_STATE_FILE).is_file())


def _latency_table(out: Path, model: nn.Module, shape, config: VaclConfig):
    """The latency table the options need (else None), kept in the run
    (:func:`resprune.measure.latency_table.run_table`)."""
    if not (config.cost == "latency" or config.round_to == "auto"
            or config.target_latency_reduction is not None
            or config.target_latency is not None):
        return None
    from ..measure import latency_table

    return latency_table.run_table(out, model, shape, config.latency_runtime,
                                   config.latency_batch)


def _check(config: VaclConfig) -> str:
    """The latency check of this process: only rank 0 times models (its decision is the one
    every process keeps; the others would disturb its timings)."""
    return config.latency_check if distributed.is_main() else "table"


def _sparse_callbacks(config: VaclConfig, reg: Regularizer, model: nn.Module, shape,
                      target: dict[str, float], state: dict[str, Any], table) -> list[Any]:
    """The lambda schedule (and, with ``fade``, the fade) of the sparsity stage.

    The groups a dry run of the target removes, and their share, are kept in ``state`` so a
    resumed run uses the same ones.
    """
    if "rms_start" not in state:
        state["rms_start"] = _scores(model, reg, "rms")
    pruned_only = config.reg_groups == "pruned"
    fading = config.fade != "off"
    share = config.lam_target_share
    need_dry = pruned_only or fading or (config.lam_schedule == "raise" and share is None)
    if need_dry and "dry_run_groups" not in state:
        dry = prune(copy.deepcopy(model), shape, include_bn=reg.include_bn,
                    include_consumers=reg.include_consumers, score=config.group_score,
                    round_to=config.round_to, max_layer_reduction=config.max_layer_reduction,
                    latency_table=table, cost=config.cost,
                    latency_check=_check(config), scores=state["rms_before"],
                    **target)
        dry = distributed.broadcast_object(dry)  # decided once, on rank 0
        state["dry_run_groups"] = dry["removed_groups"]
        state["lam_target_share"] = dry["groups_removed"] / max(dry["groups_total"], 1)
    if pruned_only:
        reg.select(state["dry_run_groups"])
        state["lam_target_share"] = share = share if share is not None else 0.9
    elif config.lam_schedule == "raise" and share is None:
        share = state["lam_target_share"]
    callbacks: list[Any] = [LamSchedule(reg, config.lam_schedule, config.lam_growth, share,
                                        config.near_zero, config.lam_max)]
    if fading:
        callbacks.append(Fade(group_slices(model, reg.groups, state["dry_run_groups"]),
                              end=config.fade_end))
        log.info("fading %d channel groups to zero over the first %.0f %% of sparsity "
                 "training", len(state["dry_run_groups"]), 100 * config.fade_end)
    return callbacks


def _step_dir(out: Path, name: str, k: int, steps: int) -> Path:
    """``stages/pruned`` / ``stages/finetune`` of the last (or only) pruning step, else
    ``stages/pruned-k`` / ``stages/finetune-k``."""
    return stage_dir(out, name if k == steps else f"{name}-{k}")


def _step_input(out: Path, k: int, steps: int, state: dict[str, Any], reg: Regularizer,
                config: VaclConfig, shape, train_loader) -> tuple[Path, Regularizer, Any, Any]:
    """Pruning step ``k``'s input: its directory, its groups (``reg`` of the sparse model for
    step 1, else one traced on the previous step's fine-tuned model), their scores and the
    model's sizes (step 1: the input's, which sparsity training does not change)."""
    if k == 1:
        return stage_dir(out, "sparse"), reg, state["rms_after"], state["base"]
    src = _step_dir(out, "finetune", k - 1, steps)
    model = load(src)
    step_reg = Regularizer(model, include_bn=config.include_bn,
                           include_consumers=config.include_consumers, input_shape=shape)
    scores = _Scorer(step_reg, config, train_loader)(model)
    return src, step_reg, scores, measures.sizes(model, shape)


def step_rule(target: dict[str, float], k: int, steps: int, base: dict[str, Any],
              now: dict[str, Any]) -> dict[str, float]:
    """Step ``k`` of ``steps`` of a params or MACs ``target`` (a reduction of ``base``): the
    reduction of the step's input (sizes ``now``) that leaves ``(1 - R) ** (k / steps)`` of
    ``base``, so the last step leaves the target's ``1 - R`` (never below 0: nothing to do)."""
    rule = {}
    for key, r in target.items():  # params, MACs or both
        left = (1.0 - r) ** (k / steps) * base[_metric(key)]
        rule[key] = max(0.0, 1.0 - left / now[_metric(key)])
    return rule


def _metric(key: str) -> str:
    """``target_macs_reduction`` -> ``macs``."""
    return key[len("target_"):-len("_reduction")]


def _overall(got: dict[str, Any], state: dict[str, Any], target: dict[str, float]
             ) -> dict[str, Any]:
    """The last step's prune essentials restated for the whole progressive pruning: sizes
    and reductions against the input, group counts summed over the steps, widths from the
    input's, the target the user gave."""
    first, pr = state["steps"][0], dict(got["prune"])
    base = state["base"]
    targets = {_metric(key): float(r) for key, r in target.items()}
    pr.update(targets=targets,
              target_reduction=next(iter(targets.values())) if len(targets) == 1 else None,
              params_before=base["params"], macs_before=base["macs"],
              params_reduction=1 - pr["params_after"] / base["params"],
              macs_reduction=1 - pr["macs_after"] / base["macs"],
              groups_total=first["groups_total"],
              groups_removed=sum(s["groups_removed"] for s in state["steps"]),
              removed_by_kind={kind: sum(s["removed_by_kind"].get(kind, 0)
                                         for s in state["steps"])
                               for kind in first["groups_by_kind"]})
    widths = {n: [first["widths"][n][0], got["widths"][n][1]] for n in first["widths"]}
    return {"prune": pr, "widths": widths}


def _prune(src: Path, where: Path, shape, reg: Regularizer, target: dict[str, float],
           rms_after: list[float], config: VaclConfig, table, train_loader, val_loader,
           precision: str) -> dict[str, Any]:
    """Prune the model in ``src`` (its groups ``reg.groups``, scored ``rms_after``) and, with
    ``config.reconstruct``, re-fit what is left to it on training images; the result ends in
    ``where``."""
    model = load(src)
    report = prune(model, shape, groups=reg.groups, include_bn=reg.include_bn,
                   include_consumers=reg.include_consumers, score=config.group_score,
                   round_to=config.round_to, max_layer_reduction=config.max_layer_reduction,
                   latency_table=table, cost=config.cost,
                   latency_check=_check(config), scores=rms_after, **target)
    report["reconstruction"] = None
    if config.reconstruct:
        report["reconstruction"] = _reconstruct(load(src), model, report, config, train_loader,
                                                val_loader, precision)
        report["reconstruction_layers"] = report["reconstruction"].pop("layers")
    # Decided once: rank 0's pruned model is the one written below and read back by every
    # process for fine-tuning; its report is the one every process keeps.
    report = distributed.broadcast_object(report)
    save(model, where, metadata={"kind": "vacl-pruned"})
    atomic_write_json(where / PRUNE_REPORT, report)
    index = {g.name: g.index for g in reg.groups}
    removed = [rms_after[index[n]] for n in report["removed_groups"]]
    cutoff = report["threshold"] if report["mode"] == "threshold" else (
        max(removed) if removed else None)
    return {"prune": {**{k: report[k] for k in PRUNE_KEYS}, "cutoff": cutoff},
            "widths": {n: [report["widths_before"][n], report["widths_after"][n]]
                       for n in report["widths_before"]}}


def _reconstruct(original: nn.Module, model: nn.Module, report: dict[str, Any],
                 config: VaclConfig, train_loader, val_loader, precision: str
                 ) -> dict[str, Any]:
    """Re-fit the pruned ``model`` to ``original`` (:func:`reconstruct`); what it read, the
    layers' mean relative output error before and after, val top-1 before it, seconds."""
    t0 = time.perf_counter()
    val_before = (evaluate(model, val_loader, precision)["top1"]
                  if getattr(val_loader, "num_samples", 1) else None)
    got = reconstruct(original, model, train_loader, config.reconstruct,
                      report["kept_out_channels"], ridge=config.reconstruct_ridge,
                      seed=config.train.seed)
    rec = summarize(got, time.perf_counter() - t0)
    log.info("reconstruction: %s", describe(rec))
    return {**rec, "val_top1_before": val_before, "layers": got["layers"]}


def _auto_target(out: Path, shape, reg: Regularizer, val_loader, target: dict[str, float],
                 config: VaclConfig, reference: float, device, scores: list[float]
                 ) -> dict[str, Any] | None:
    """``auto_tolerance``: the params reduction chosen on the validation split (else None).

    Candidates are held to the input net's val top-1 (``reference``), not the sparse one's.
    """
    if "auto_tolerance" not in target:
        return None
    from .select import choose_reduction

    auto = choose_reduction(load(stage_dir(out, "sparse"), device=device), shape, val_loader,
                            target["auto_tolerance"], groups=reg.groups,
                            include_bn=reg.include_bn,
                            include_consumers=reg.include_consumers, score=config.group_score,
                            reference=reference, precision=config.train.precision,
                            round_to=config.round_to,
                            max_layer_reduction=config.max_layer_reduction, scores=scores)
    auto = distributed.broadcast_object(auto)
    log.info("auto: %d candidate(s) tried on the validation split; params target %.0f %% "
             "(stop: %s)", len(auto["candidates"]), 100 * auto["chosen"], auto["stop"])
    return auto


def _warn_target(pr: dict[str, Any]) -> None:
    if not pr["target_reached"]:
        names = {"params": "params", "macs": "MACs", "latency": "predicted latency"}
        got = ", ".join(f"{100 * (pr.get(m + '_reduction') or 0.0):.2f} % of {names[m]}"
                        for m in targets_of(pr))
        log.warning("warning: the target (%s) was not reached (%s removed): every remaining "
                    "channel group is needed to keep the channels each layer must keep",
                    fmt_targets(targets_of(pr), names), got)
