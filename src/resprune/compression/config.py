"""Options of :func:`resprune.compress` (:class:`CompressConfig`), generated from the stages'.

``CompressConfig`` has one flat field per option, named as on the command line
(``retrain_epochs`` is ``--retrain-epochs``): its own (``stages``, the budget,
``finetune_final_epochs`` / ``finetune_final_lr``, ``epoch_size``, ``train``) and every field
of :class:`~resprune.implosion.ImplosionConfig` and :class:`~resprune.vacl.VaclConfig`, with
*their* defaults, types and checks: a stage option is defined once, in its stage's config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, field
from typing import Any

from ..errors import UserError
from ..fields import LR, Float, Int, check_fields, opt
from ..implosion import ImplosionConfig
from ..train import TrainConfig
from ..vacl import VaclConfig
from ..vacl.config import REDUCTION, RULES, one_rule

STAGES = ("train", "implode", "vacl", "finetune")
DEFAULT_STAGES = ("implode", "vacl", "finetune")
# stage fields compress sets itself: the base training, the budget
_OWN_STAGE_FIELDS = {"train", "seed", "epoch_size", *RULES}  # the vacl rules are the budget


class _Methods:
    """Behaviour of :class:`CompressConfig` (the dataclass is generated below)."""

    def validate(self) -> Any:
        """Check every option (each stage's config checks its own); UserError names the first
        bad one."""
        stages = list(self.stages)
        if not stages or any(s not in STAGES for s in stages):
            raise UserError(f"stages must be a non-empty list of {', '.join(STAGES)}, got "
                            f"{stages!r}")
        for i, s in enumerate(stages):
            if s in stages[:i]:
                raise UserError(f"stage {s!r} is listed twice; each stage runs at most once")
        if "train" in stages and stages[0] != "train":
            raise UserError("the train stage can only come first")
        given = [k for k in RULES if getattr(self, k) is not None]
        if given and not one_rule(given):
            raise UserError("give at most one of " + ", ".join("--" + k.replace("_", "-")
                                                               for k in RULES)
                            + ", or both --target-params-reduction and "
                            "--target-macs-reduction"
                            + f" (got {', '.join('--' + k.replace('_', '-') for k in given)})")
        if given and "vacl" not in stages:
            raise UserError(f"--{given[0].replace('_', '-')} applies to the vacl stage, which "
                            f"the stages {','.join(stages)} leave out; add vacl or drop it")
        if not isinstance(self.train, TrainConfig):
            raise UserError(f"train must be a resprune.train.TrainConfig, got "
                            f"{type(self.train).__name__}")
        check_fields(self)
        self.train.validate()
        self.stage_train("finetune").validate()
        if "implode" in stages:
            self.implosion_config()
        if "vacl" in stages:
            self.vacl_config(self.vacl_rule_example())
        return self

    # -- the stages' configs -------------------------------------------------------------
    def _fields_of(self, cls) -> dict[str, Any]:
        names = {f.name for f in dataclasses.fields(cls)} - _OWN_STAGE_FIELDS
        return {n: getattr(self, n) for n in names}

    def stage_train(self, name: str) -> TrainConfig:
        """The base training of every stage; ``train`` keeps its epochs, lr and warm-up, the
        others start from trained weights (no warm-up; their epochs and lr are their own)."""
        if name == "train":
            return self.train
        epochs, lr = ((self.finetune_final_epochs, self.finetune_final_lr)
                      if name == "finetune" else (self.train.epochs, self.train.lr))
        return dataclasses.replace(self.train, warmup_epochs=0.0, epochs=epochs, lr=lr)

    def implosion_config(self) -> ImplosionConfig:
        return ImplosionConfig(**self._fields_of(ImplosionConfig), seed=self.train.seed,
                               train=self.stage_train("implode")).validate()

    def vacl_config(self, rule: dict[str, float]) -> VaclConfig:
        """The vacl stage's config with its one pruning ``rule`` (from :meth:`budget`)."""
        return VaclConfig(**self._fields_of(VaclConfig), **rule, epoch_size=self.epoch_size,
                          train=self.stage_train("vacl")).validate()

    def budget(self) -> dict[str, Any]:
        """How much the pipeline is asked to remove: ``mode`` params / macs / params+macs /
        latency / threshold / auto / none, with ``targets`` (``{metric: reduction}``) and,
        for one target, ``target_reduction``, or ``threshold`` or ``auto_tolerance``."""
        targets = {m: float(getattr(self, f"target_{m}_reduction")) for m in ("params", "macs")
                   if getattr(self, f"target_{m}_reduction") is not None}
        if targets:
            one = {"target_reduction": next(iter(targets.values()))} if len(targets) == 1 else {}
            return {"mode": "+".join(targets), "targets": targets, **one}
        if self.target_latency_reduction is not None:
            return {"mode": "latency", "target_reduction": float(self.target_latency_reduction)}
        if self.target_latency is not None:
            return {"mode": "latency", "target_ms": float(self.target_latency)}
        if "vacl" not in self.stages:
            return {"mode": "none"}
        if self.threshold is not None:
            return {"mode": "threshold", "threshold": float(self.threshold)}
        tol = self.auto_tolerance if self.auto_tolerance is not None else self.tolerance
        return {"mode": "auto", "auto_tolerance": float(tol)}

    def vacl_rule_example(self) -> dict[str, float]:
        b = self.budget()
        if b.get("targets"):
            return {f"target_{m}_reduction": r for m, r in b["targets"].items()}
        if b["mode"] == "latency":
            return {"target_latency_reduction": b.get("target_reduction", 0.5)}
        return {k: v for k, v in b.items() if k != "mode"}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = list(d["stages"])
        return d


def _stage_fields() -> list[tuple[str, Any, Any]]:
    out: dict[str, tuple[str, Any, Any]] = {}
    for cls in (ImplosionConfig, VaclConfig):
        for f in dataclasses.fields(cls):
            if f.name in _OWN_STAGE_FIELDS or f.name in out:
                continue
            default = (field(default=f.default, metadata=f.metadata)
                       if f.default is not MISSING
                       else field(default_factory=f.default_factory, metadata=f.metadata))
            out[f.name] = (f.name, f.type, default)
    return list(out.values())


_OWN_FIELDS = [
    ("stages", "tuple[str, ...]", opt(DEFAULT_STAGES, "stages in order, each at most once; "
                                      "train (first only) trains the model passed in",
                                      cli=False)),
    ("target_params_reduction", "float | None", opt(
        None, "remove at least the fraction R in [0, 1) of the input's params in all: "
        "implosion goes by accuracy, VACL removes the rest", REDUCTION, metavar="R")),
    ("target_macs_reduction", "float | None", opt(
        None, "the same for MACs (with --target-params-reduction too: both must be met)",
        REDUCTION, metavar="R")),
    ("target_latency_reduction", "float | None", opt(
        None, "remove at least the fraction R in [0, 1) of the input's latency as measured in "
        "--latency-runtime at --latency-batch: implosion goes by accuracy, VACL removes the "
        "rest, judged by per-layer latency tables of the input and of its own input",
        REDUCTION, metavar="R")),
    ("target_latency", "float | None", opt(
        None, "the same with an absolute goal: at most MS milliseconds per batch of "
        "--latency-batch", Float(0, open_low=True, optional=True), metavar="MS")),
    ("threshold", "float | None", opt(
        None, "no target: VACL removes every channel group scoring below T",
        Float(0, optional=True), metavar="T")),
    ("auto_tolerance", "float | None", opt(
        None, "without a target: VACL prunes the largest share of params whose pruned copy "
        "keeps val top-1 within T points of the vacl stage's input (default: --tolerance)",
        Float(0, optional=True), metavar="T")),
    ("finetune_final_epochs", "int", opt(10, "epochs of the finetune stage", Int(0))),
    ("finetune_final_lr", "float", opt(0.01, "peak learning rate of the finetune stage", LR)),
    ("epoch_size", "int | None", opt(None, "training images per epoch (default: all)",
                                     Int(1, optional=True), cli=False)),
    ("train", "TrainConfig", field(default_factory=TrainConfig)),
]

CompressConfig = dataclasses.make_dataclass(
    "CompressConfig", _OWN_FIELDS + _stage_fields(), bases=(_Methods,))
CompressConfig.__module__ = __name__
CompressConfig.__doc__ = """Every option of :func:`resprune.compress`, one flat field each.

Own fields: ``stages`` (order of ``implode`` / ``vacl`` / ``finetune``, each at most once;
``train`` first trains the model passed in from its initial weights), the budget (at most one
of ``target_params_reduction`` / ``target_macs_reduction``: the vacl stage removes what the
earlier stages left; ``threshold``; ``auto_tolerance``, default ``tolerance``),
``finetune_final_epochs`` / ``finetune_final_lr`` (the finetune stage), ``epoch_size``
(training images per epoch) and ``train`` (optimizer, schedule, batch size, precision, device,
seed of every stage; its epochs, lr and warm-up are the train stage's).

Every field of :class:`~resprune.implosion.ImplosionConfig` (``score``, ``per_step``,
``retrain_epochs``, ``tolerance``, ``erase``, ``max_steps``, ``final_epochs``, ...) and of
:class:`~resprune.vacl.VaclConfig` (``lam``, ``beta``, ``fade``, ``sparse_epochs``,
``finetune_epochs``, ``group_score``, ...), with their defaults.
"""
