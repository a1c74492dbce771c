"""The Network Implosion loop: score -> erase the k lowest -> retrain -> accept or roll back.

1. If erasable units lack gates, add them (``w = 1``, logits unchanged) and train
   ``adapt_epochs`` so the gates learn the units' priorities.
2. Measure the baseline: validation top-1 of the starting net.
3. Repeat: score the erasable units, erase the ``per_step`` lowest, retrain ``retrain_epochs``
   at ``retrain_lr``, evaluate on the **validation** split (never the test set). Accept when
   ``val_top1 >= baseline - tolerance / 100`` (top-1 as a fraction, tolerance in percentage
   points); otherwise restore the last accepted net exactly and
   stop. Also stop at ``target_depth``, after ``max_steps``, or when nothing is erasable.
4. Optionally retrain the final net ``final_epochs``; fold the gates into the BNs.

Every finished step is checkpointed in ``run_dir`` (see :mod:`resprune.implosion.store`);
``implode(..., resume=True)`` after a kill continues from the last finished step and, on CPU,
reaches the same net bit for bit (every retraining is seeded by its step number).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .. import distributed
from ..errors import UserError
from ..io import remove, remove_tree
from ..measure import evaluate, sizes
from ..measure.batchnorm import recalibrate_batchnorm
from ..runstate import FORMAT as STATE_FORMAT
from ..runstate import (
    TRAIN_STATE_FILE,
    comparable,
    config_json,
    fingerprint,
    read_state,
    write_state,
)
from ..train import Fade, Slice, Trainer, reconstruct
from ..train.reconstruction import describe, summarize
from ..train.trainer import RESUME_FREE_OPTIONS
from .candidates import per_cost, screened_choice, select, unit_costs
from .config import ImplosionConfig
from .erase import erase_units, set_submodule
from .gates import add_gates, erasable_items, fold_gates, gates, unit_weight_layers
from .scores import batch_inputs, score_units
from .store import load_weights, remove_weights, save_weights, step_dir

log = logging.getLogger("resprune.implosion")

#: ``trainer_factory(model, train_loader, val_loader, train_config, run_dir)`` returns an
#: object whose ``fit()`` trains ``model`` in place (``resprune.train.Trainer`` by default).
#: With ``erase="fade"`` it is also given ``callbacks=[Fade(...)]``, to pass to the trainer.
TrainerFactory = Callable[[nn.Module, Iterable, Iterable, Any, Path], Any]
#: ``evaluate_fn(model, loader)`` returns at least ``{"top1": fraction in [0, 1]}``.
EvaluateFn = Callable[[nn.Module, Iterable], dict]

STOP_REASONS = ("accuracy", "target_depth", "max_steps", "nothing_erasable")



@dataclass
class ImplosionResult:
    """What :func:`implode` did.

    ``history`` has one dict per step: ``step``, ``erased`` (unit names), ``priorities``
    (their scores), ``scores`` (every erasable unit's score at that step), ``val_top1``,
    ``val_loss``, ``params``, ``macs``, ``depth`` (of the net after erasure and retraining),
    ``accepted`` (False: rolled back), ``epochs`` (retraining epochs spent) and ``seconds``;
    a step evaluated untrained right after its cut (``retrain="needed"``, or ``erase="cut"``
    with ``recalibrate``) also has ``cut_val_top1`` and ``cut_val_loss``.
    ``initial`` measures the model as passed in; ``baseline`` the gated, adapted start net
    (with ``val_top1``); ``final`` the returned net (after the final retrain and folding).
    """

    model: nn.Module
    erased: list[str]
    stop_reason: str
    baseline: dict[str, Any]
    initial: dict[str, Any]
    final: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    gates: dict[str, float] = field(default_factory=dict)
    adapt_epochs: int = 0
    run_dir: Path | None = None

    @property
    def accepted_steps(self) -> int:
        return sum(1 for h in self.history if h["accepted"])

    def to_dict(self) -> dict[str, Any]:
        return {"erased": self.erased, "stop_reason": self.stop_reason,
                "initial": self.initial, "baseline": self.baseline, "final": self.final,
                "history": self.history, "gates": self.gates,
                "adapt_epochs": self.adapt_epochs,
                "run_dir": None if self.run_dir is None else str(self.run_dir)}


def _default_trainer_factory(progress: bool, distill=None) -> TrainerFactory:
    def make(model, train_loader, val_loader, config, run_dir, callbacks=()):
        return Trainer(model, train_loader, val_loader, config, run_dir=run_dir,
                       progress=progress, distill=distill, callbacks=list(callbacks))
    return make


def _default_evaluate(model: nn.Module, loader: Iterable) -> dict:
    return evaluate(model, loader)


class _Run:
    """One implosion: the mutable model, its measurements and its checkpoint state."""

    def __init__(self, model, train_loader, val_loader, config, run_dir, trainer_factory,
                 evaluate_fn, input_shape):
        self.model = model
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.config = config
        self.run_dir = run_dir
        self.trainer_factory = trainer_factory
        self.evaluate_fn = evaluate_fn
        self.input_shape = input_shape
        self.state: dict[str, Any] = {}
        self.resume = False
        self.unit_cost: dict[str, float] | None = None  # with a cost: what each unit costs
        self.screen_cost: dict[str, float] | None = None  # with a screen cost: the same

    # -- measurements --------------------------------------------------------------------
    def measure(self) -> dict[str, Any]:
        return sizes(self.model, self.input_shape)

    def evaluate(self) -> dict[str, float]:
        res = self.evaluate_fn(self.model, self.val_loader)
        top1 = float(res["top1"])
        if not math.isfinite(top1):
            raise UserError("validation top-1 is not a number; check the validation loader")
        loss = res.get("loss")
        return {"val_top1": top1, "val_loss": None if loss is None else float(loss)}

    def train(self, epochs: int, lr: float, seed: int, directory: Path,
              callbacks: list | None = None) -> int:
        """Retrain the model in place; return the epochs spent (0: nothing to do).

        The trainer writes its logs into ``directory``. A retraining cut short by a kill is
        continued from its last finished epoch when resuming (the trainer's own exact
        resume), else started over; once finished, only its ``metrics.jsonl`` is kept.
        """
        if epochs == 0:
            return 0
        cfg = dataclasses.replace(self.config.train, epochs=epochs, lr=lr, warmup_epochs=0,
                                  seed=seed)
        partial = self.resume and (directory / TRAIN_STATE_FILE).is_file()
        if not partial:
            remove_tree(directory)
        extra = {"callbacks": callbacks} if callbacks else {}
        trainer = self.trainer_factory(self.model, self.train_loader, self.val_loader, cfg,
                                       directory, **extra)
        if partial:
            trainer.fit(resume=True)
        else:
            trainer.fit()
        remove(*(directory / name for name in (TRAIN_STATE_FILE, "model.safetensors",
                                                "arch.json")))
        return epochs

    # -- checkpoints ---------------------------------------------------------------------
    def commit(self, directory: Path | None = None) -> None:
        """Write the model (if ``directory``) and then the state that points at it."""
        if directory is not None:
            save_weights(self.model, directory)
        write_state(self.run_dir, self.state)


def _check_resume(state: dict[str, Any], config: ImplosionConfig, start_fp: str,
                  run_dir: Path) -> None:
    stored = _comparable(state.get("config") or {})
    current = _comparable(config_json(config))
    if stored != current:
        keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        raise UserError(f"{run_dir} holds an implosion run with different options "
                        f"({', '.join(keys)}); resume with the same options or use a new run "
                        "directory")
    if state.get("start_fingerprint") != start_fp:
        raise UserError(f"the model passed to implode is not the one the run in {run_dir} "
                        "started from; pass the same starting checkpoint to resume")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return comparable(config, config_json(ImplosionConfig()), RESUME_FREE_OPTIONS)


def _restore(model: nn.Module, snapshot: nn.Module, names: list[str]) -> None:
    """Roll back: put the erased units back from ``snapshot`` and restore all its weights."""
    ref = next(model.parameters(), None)
    for name in names:
        unit = snapshot.get_submodule(name)
        set_submodule(model, name, unit if ref is None else unit.to(ref.device))
    model.load_state_dict(snapshot.state_dict(), strict=True)
    model.zero_grad(set_to_none=True)


def implode(model: nn.Module, train_loader: Iterable, val_loader: Iterable,
            config: ImplosionConfig | None = None, run_dir: str | Path | None = None,
            trainer_factory: TrainerFactory | None = None, *, resume: bool = False,
            evaluate_fn: EvaluateFn | None = None,
            input_shape: tuple[int, ...] | None = None,
            progress: bool = True, distill=None) -> ImplosionResult:
    """Erase residual units of ``model`` (in place) while validation accuracy holds.

    ``val_loader`` must hold the validation split carved from the training data; it alone
    decides. ``run_dir`` receives a checkpoint after every finished step; with
    ``resume=True`` a run killed at any point continues from its last finished step (pass
    the same starting model and config). ``input_shape`` ([C, H, W], for MACs) defaults to
    the shape of the first validation batch. ``trainer_factory`` and ``evaluate_fn`` replace
    ``resprune.train.Trainer`` and ``resprune.measure.evaluate``. ``distill`` (a
    :class:`resprune.train.Distillation`) makes every retraining learn from a teacher.
    """
    config = (config or ImplosionConfig()).validate()
    if val_loader is None:
        raise UserError("implode needs a validation loader (a split carved from the training "
                        "data): erasures are accepted or rolled back on it")
    if run_dir is None:
        raise UserError("implode needs a run directory for its step checkpoints")
    run_dir = Path(run_dir)
    if input_shape is None:
        first = next(iter(val_loader), None)
        if first is None:
            raise UserError("the validation loader yields no batches; check the data split")
        input_shape = tuple(batch_inputs(first).shape[1:])
    run = _Run(model, train_loader, val_loader, config, run_dir,
               trainer_factory or _default_trainer_factory(progress, distill),
               evaluate_fn or _default_evaluate, tuple(input_shape))

    run.resume = resume
    start_fp = fingerprint(model)
    state = read_state(run_dir, "implode")
    if state is not None and not resume:
        raise UserError(f"{run_dir} already holds an implosion run; pass resume=True to "
                        "continue it or choose a new run directory")
    if not erasable_items(model) and state is None:
        raise UserError(f"{type(model).__name__} has no erasable residual unit (a "
                        "resprune.models.ResidualUnit with an identity shortcut)")
    if config.cost != "none":  # measured on the start model, before any erasure
        run.unit_cost = unit_costs(run_dir, model, tuple(input_shape), config)
    if config.screen_cost != "none":
        run.screen_cost = (run.unit_cost if config.screen_cost == config.cost else
                           unit_costs(run_dir, model, tuple(input_shape), config,
                                      config.screen_cost))
    if state is None:
        _start(run, start_fp)
    else:
        _check_resume(state, config, start_fp, run_dir)
        _replay(run, state)
    _steps(run)
    _finish(run)
    return _result(run)


def _start(run: _Run, start_fp: str) -> None:
    cfg = run.config
    initial = run.measure()
    if cfg.target_depth is not None and cfg.target_depth > initial["depth"]:
        raise UserError(f"target_depth {cfg.target_depth} is above the model's depth "
                        f"{initial['depth']} (weight layers); choose a smaller target")
    added = add_gates(run.model)
    epochs = 0
    if added:
        log.info("added %d gates; adapting them for %d epochs", len(added), cfg.adapt_epochs)
        epochs = run.train(cfg.adapt_epochs, cfg.adapt_lr or cfg.retrain_lr, cfg.seed,
                           step_dir(run.run_dir, 0) / "train")
    baseline = {**run.evaluate(), **run.measure()}
    log.info("baseline: val top-1 %.2f %%, depth %d", 100 * baseline["val_top1"],
             baseline["depth"])
    run.state = {
        "format": STATE_FORMAT, "kind": "implode", "config": config_json(cfg),
        "start_fingerprint": start_fp, "gates_added": added, "adapt_epochs": epochs,
        "initial": initial, "baseline": baseline, "history": [], "erased": [],
        "accepted_step": 0, "phase": "steps", "stop_reason": None, "final": None,
    }
    run.commit(step_dir(run.run_dir, 0))


def _rebuild(run: _Run, directory: Path, fold: bool = False) -> None:
    """Bring the passed-in start model to the recorded structure, then load ``directory``."""
    model, state = run.model, run.state
    add_gates(model)
    present = {n for n, _ in erasable_items(model)}
    erase_units(model, [n for n in state["erased"] if n in present])
    if fold:
        fold_gates(model)
    load_weights(model, directory)


def _replay(run: _Run, state: dict[str, Any]) -> None:
    run.state = state
    phase = state["phase"]
    log.info("resuming implosion in %s (phase %s, %d steps done)", run.run_dir, phase,
             len(state["history"]))
    if phase in ("steps", "stopped"):
        _rebuild(run, step_dir(run.run_dir, state["accepted_step"]))
    elif phase == "final":
        _rebuild(run, step_dir(run.run_dir, "final"))
    elif phase == "done":
        _rebuild(run, run.run_dir, fold=run.config.fold)
    else:
        raise UserError(f"{run.run_dir}: unknown implosion phase {phase!r}; the state is corrupt")


def _stop_reason(run: _Run, depth: int) -> str | None:
    cfg, history = run.config, run.state["history"]
    if cfg.target_depth is not None and depth <= cfg.target_depth:
        return "target_depth"
    if cfg.max_steps is not None and len(history) >= cfg.max_steps:
        return "max_steps"
    if not erasable_items(run.model):
        return "nothing_erasable"
    return None


def _steps(run: _Run) -> None:
    state, cfg = run.state, run.config
    baseline = state["baseline"]["val_top1"]
    while state["phase"] == "steps":
        history = state["history"]
        depth = history[-1]["depth"] if history else state["baseline"]["depth"]
        reason = _stop_reason(run, depth)
        if reason is not None:
            state["phase"], state["stop_reason"] = "stopped", reason
            run.commit()
            break
        k = len(history) + 1
        t0 = time.monotonic()
        rejected = {n for h in history if not h["accepted"] for n in h["erased"]}
        # decided once: scores read each process's own batches, so rank 0's count
        scores = distributed.broadcast_object(score_units(
            run.model, cfg.score, loader=run.train_loader, num_batches=cfg.score_batches,
            seed=cfg.seed + k))
        candidates = {n: v for n, v in scores.items() if n not in rejected}
        if run.unit_cost is not None:
            candidates = per_cost(candidates, run.unit_cost)
        if not candidates:
            state["phase"], state["stop_reason"] = "stopped", "no_candidates"
            run.commit()
            break
        depths = {n: unit_weight_layers(u) for n, u in erasable_items(run.model)}
        rounds: list[dict[str, Any]] = []
        if cfg.screen > 0:
            names, rounds = screened_choice(run, candidates, depths, depth, cfg.seed + k)
        else:
            names = select(candidates, depths, cfg.per_step, depth, cfg.target_depth)
        names = distributed.broadcast_object(names)
        snapshot = copy.deepcopy(run.model)
        bar = baseline - cfg.tolerance / 100 - 1e-12
        measured = cut = None
        if cfg.retrain == "needed":
            measured, cut = _without_retraining(run, names, bar, cfg.seed + k, snapshot)
        epochs = 0
        if measured is None:
            epochs, after_cut = _erase_and_retrain(run, names, k, snapshot,
                                                   measure_cut=cut is None)
            if cut is None:
                cut = after_cut
            measured = run.evaluate()
        record = {"step": k, "erased": names, "priorities": {n: scores[n] for n in names},
                  "scores": scores, **measured, **run.measure(),
                  "accepted": False, "epochs": epochs}
        if cut is not None:  # the net right after the cut, before any retraining
            record["cut_val_top1"], record["cut_val_loss"] = cut["val_top1"], cut["val_loss"]
            if "reconstruction" in cut:
                record["reconstruction"] = cut["reconstruction"]
        if rounds:  # the first round screened every candidate on the net as it stood
            record["screen_loss"] = rounds[0]["loss"]
            if "intact" in rounds[0]:
                record["screen_intact_loss"] = rounds[0]["intact"]
                record["screen_rank"] = rounds[0]["rank"]
            if len(rounds) > 1:
                record["screen_rounds"] = rounds
        # top-1 is a fraction (as from resprune.measure.evaluate); tolerance is in points
        record["accepted"] = distributed.broadcast_object(record["val_top1"] >= bar)
        record["seconds"] = round(time.monotonic() - t0, 3)
        history.append(record)
        log.info("step %d: erased %s%s, val top-1 %.2f %% (baseline %.2f %%): %s", k,
                 ", ".join(names), "" if epochs else " without retraining",
                 100 * record["val_top1"], 100 * baseline,
                 "accepted" if record["accepted"] else "rolled back")
        if record["accepted"]:
            previous = state["accepted_step"]
            state["erased"] = state["erased"] + names
            state["accepted_step"] = k
            run.commit(step_dir(run.run_dir, k))
            remove_weights(step_dir(run.run_dir, previous))
        else:
            _restore(run.model, snapshot, names)
            if _rejections_in_a_row(history) >= cfg.patience:
                state["phase"], state["stop_reason"] = "stopped", "accuracy"
            run.commit()
        del snapshot


def _without_retraining(run: _Run, names: list[str], bar: float, seed: int,
                        before: nn.Module) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``retrain="needed"``: cut ``names`` (re-fitting the rest to ``before``, the net before
    the cut, with ``reconstruct``, else re-estimating BatchNorm statistics with
    ``recalibrate``; training images read under ``seed``) and evaluate. When val top-1 holds
    (>= ``bar``) the units stay cut and the measurement is returned twice; else the net
    before the cut is put back exactly (nothing was trained) and ``(None, measurement)`` is
    returned, so the step retrains as usual."""
    measured = _cut_and_measure(run, names, seed, before)
    if distributed.broadcast_object(measured["val_top1"] >= bar):
        return measured, measured
    log.info("without retraining: val top-1 %.2f %% with %s cut; retraining",
             100 * measured["val_top1"], ", ".join(names))
    _restore(run.model, copy.deepcopy(before), names)
    return None, measured


def _cut(run: _Run, names: list[str], seed: int, before: nn.Module, recalibrate: bool
         ) -> dict[str, Any] | None:
    """Erase ``names``; with ``reconstruct``, re-fit the rest to ``before`` (the net before
    the cut) and return the fit's record; else, when ``recalibrate`` is asked and set,
    re-estimate BatchNorm statistics. Training images are read under ``seed``."""
    cfg = run.config
    erase_units(run.model, names)
    if cfg.reconstruct:
        t0 = time.perf_counter()
        got = reconstruct(before, run.model, run.train_loader, cfg.reconstruct,
                          ridge=cfg.reconstruct_ridge, seed=seed)
        # every process solved the same summed equations (see reconstruct): the same fit
        rec = distributed.broadcast_object(summarize(got, time.perf_counter() - t0))
        log.info("reconstruction after cutting %s: %s", ", ".join(names), describe(rec))
        return rec
    if recalibrate and cfg.recalibrate:
        recalibrate_batchnorm(run.model, run.train_loader, cfg.recalibrate, seed)
    return None


def _cut_and_measure(run: _Run, names: list[str], seed: int, before: nn.Module
                     ) -> dict[str, Any]:
    """Cut ``names`` (:func:`_cut`, with BatchNorm re-estimation) and evaluate the untrained
    net; the re-fit's record, if any, under ``reconstruction``."""
    rec = _cut(run, names, seed, before, recalibrate=True)
    measured = run.evaluate()
    return measured if rec is None else {**measured, "reconstruction": rec}


def _erase_and_retrain(run: _Run, names: list[str], k: int, before: nn.Module,
                       measure_cut: bool = False) -> tuple[int, dict[str, Any] | None]:
    """Step ``k``'s removal of ``names`` and its retraining, by ``config.erase``; return the
    epochs spent and, for a cut measured first, its validation measurement.

    With ``recalibrate`` or ``reconstruct`` set and ``measure_cut``, a cut net is evaluated
    before it retrains, its BatchNorm statistics re-estimated on ``recalibrate`` training
    images or the rest of the net re-fitted to ``before`` on ``reconstruct`` (read under the
    step's seed). Re-estimated statistics are kept: training-mode passes normalise with
    batch statistics, so the retraining's weights do not depend on them; a re-fit is kept
    too, as the retraining's start. A fade changes no output when it erases, so it has no
    such measurement.
    """
    cfg = run.config
    where = step_dir(run.run_dir, k) / "train"
    if cfg.erase == "cut":
        cut = None
        if measure_cut and (cfg.recalibrate or cfg.reconstruct):
            cut = _cut_and_measure(run, names, cfg.seed + k, before)
            log.info("step %d: val top-1 %.2f %% right after the cut, before retraining", k,
                     100 * cut["val_top1"])
        else:
            _cut(run, names, cfg.seed + k, before, recalibrate=False)
        return run.train(cfg.retrain_epochs, cfg.retrain_lr, cfg.seed + k, where), cut
    fade = Fade([Slice(name, "gate") for name in names], end=cfg.fade_end)
    epochs = run.train(cfg.retrain_epochs, cfg.retrain_lr, cfg.seed + k, where, [fade])
    erase_units(run.model, names)  # their gates are exactly 0: no output changes
    return epochs, None


def _rejections_in_a_row(history: list[dict[str, Any]]) -> int:
    n = 0
    for h in reversed(history):
        if h["accepted"]:
            break
        n += 1
    return n


def _finish(run: _Run) -> None:
    state, cfg = run.state, run.config
    if state["phase"] == "stopped":
        final: dict[str, Any] = {"epochs": 0}
        if cfg.final_epochs > 0:
            final["epochs"] = run.train(cfg.final_epochs, cfg.final_lr or cfg.retrain_lr,
                                        cfg.seed + len(state["history"]) + 1,
                                        step_dir(run.run_dir, "final") / "train")
        state["final"] = final
        state["phase"] = "final"
        run.commit(step_dir(run.run_dir, "final"))
    if state["phase"] == "final":
        state["gates"] = gates(run.model)
        if cfg.fold:
            fold_gates(run.model)
        state["final"] = {**state["final"], **run.evaluate(), **run.measure()}
        state["phase"] = "done"
        save_weights(run.model, run.run_dir)
        run.commit()
        remove_weights(step_dir(run.run_dir, state["accepted_step"]))
        remove_weights(step_dir(run.run_dir, "final"))


def _result(run: _Run) -> ImplosionResult:
    s = run.state
    return ImplosionResult(model=run.model, erased=list(s["erased"]),
                           stop_reason=s["stop_reason"], baseline=s["baseline"],
                           initial=s["initial"], final=s["final"], history=s["history"],
                           gates=s.get("gates", {}), adapt_epochs=s["adapt_epochs"],
                           run_dir=run.run_dir)
