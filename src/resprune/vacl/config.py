"""Options of the VACL pipeline (:class:`VaclConfig`): every default, type and range, once.

``resprune vacl``'s options and YAML keys are these fields (``sparse_epochs`` is
``--sparse-epochs``); the training options of both stages come from ``train``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..fields import LR, Check, Choice, Flag, Float, Int, check_fields, opt
from ..measure.latency_table import BATCH_HELP, COSTS, RUNTIME_HELP, RUNTIMES
from ..train import FADES, TrainConfig
from ..train.fade import FADE_END, FADE_END_HELP
from ..train.reconstruction import RECONSTRUCT_HELP, RIDGE_HELP
from .latency_fit import CHECK_HELP, CHECKS
from .regularizer import FORMS, SCORES
from .schedule import LAM_SCHEDULES

#: the two targets that may be given together (pruning stops once both are reached)
BOTH = ("target_params_reduction", "target_macs_reduction")
#: the pruning rules: a run gives exactly one, or both of BOTH
RULES = ("threshold", "target_params_reduction", "target_macs_reduction",
         "target_latency_reduction", "target_latency", "auto_tolerance")


def one_rule(given) -> bool:
    """Whether the rule names ``given`` (keys of RULES) form one pruning rule: a single
    rule, or the params and MACs targets together."""
    names = set(given)
    return len(names) == 1 or names == set(BOTH)
REG_GROUPS = ("all", "pruned")


class RoundTo(Check):
    """``round_to``: an integer >= 1, or ``auto``."""

    def convert(self, text: str):
        return text if text == "auto" else int(text)

    def describe(self) -> str:
        return "an integer >= 1 or auto"

    def check(self, value, name: str = "value"):
        ok = value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                                 and value >= 1)
        return None if ok else f"{name} must be {self.describe()}, got {value!r}"


#: a target reduction: a fraction of the model in [0, 1)
REDUCTION = Float(0, 1, open_high=True, optional=True)


@dataclass
class VaclConfig:
    """How VACL sparsity-trains, prunes and fine-tunes (see ``docs/vacl.md``).

    Regularizer: ``lam`` (loss = CE + lam * R), ``beta`` (variance weight), ``form``,
    ``include_bn``, ``include_consumers``; ``reg_groups`` (``all`` | ``pruned``: only the
    groups a dry run of the target removes).
    Lambda schedule: ``lam_schedule`` (``constant`` | ``raise``), ``lam_growth``, ``lam_max``,
    ``near_zero``, ``lam_target_share`` (default: the dry run's share).
    Fade: ``fade`` (``off`` | ``linear``: the groups the target removes fall to exactly zero
    during sparsity training), ``fade_end`` (fraction of the stage's steps).
    Stages: ``sparse_epochs`` / ``sparse_lr``, ``finetune_epochs`` / ``finetune_lr``;
    ``prune_steps=K`` prunes progressively (a geometric share of a params or MACs target per
    step, ``step_epochs`` of fine-tuning after each step but the last).
    Pruning: exactly one of ``threshold``, ``target_params_reduction``,
    ``target_macs_reduction``, ``auto_tolerance`` (percentage points of val top-1), or both
    ``target_params_reduction`` and ``target_macs_reduction`` (removal stops once both are
    reached);
    ``group_score`` ranks the groups; ``round_to=N`` keeps every pruned width a multiple of N
    (runtimes such as onnxruntime compute in blocks of 8 or 16 channels);
    ``max_layer_reduction=F`` removes at most the fraction F of any layer's channels.
    Reconstruction: ``reconstruct=N`` re-fits the layers left after each pruning step on N
    training images (:func:`resprune.train.reconstruct`), ``reconstruct_ridge`` its penalty.
    Data: ``epoch_size`` training images per epoch when the pipeline builds the loaders.
    ``train``: optimizer, schedule, batch size, precision, device and seed of both stages
    (their epochs and lr come from the fields above).
    """

    lam: float = opt(1e-4, "regularizer strength lambda: loss = CE + lam * R", Float(0))
    beta: float = opt(4.0, "weight of the within-group variance term (with --form moments, 1 "
                      "is plain cross-layer group lasso)", Float(0))
    form: str = opt("moments", "regularizer form for cross-layer groups: moments, additive or "
                    "mean_std (see docs/vacl.md)", Choice(FORMS, label="form"))
    include_bn: bool = opt(True, "put each producer's BN gamma/beta into its group", Flag())
    include_consumers: bool = opt(False, "also put the consumers' input slices into the "
                                  "groups", Flag())
    reg_groups: str = opt("all", "which channel groups the regularizer acts on: all, or pruned "
                          "= only those the pruning target removes (chosen once, by a dry run "
                          "of the target on the input model), so that exactly they are driven "
                          "to zero; needs a params or MACs target",
                          Choice(REG_GROUPS, label="reg_groups"))
    lam_schedule: str = opt("constant", "constant, or raise: multiply lambda by --lam-growth "
                            "after every sparsity epoch in which fewer groups are near zero "
                            "than pruning will remove, so pruning removes groups already near "
                            "zero", Choice(LAM_SCHEDULES, label="lam_schedule"))
    lam_growth: float = opt(2.0, "factor of the raise schedule", Float(1, open_low=True))
    lam_max: float | None = opt(None, "raise schedule: never raise lambda above this "
                                "(default: no cap)", Float(0, open_low=True, optional=True))
    near_zero: float = opt(0.05, "a group is near zero when its RMS is below this fraction of "
                           "its RMS before sparsity training",
                           Float(0, 1, open_low=True, open_high=True))
    lam_target_share: float | None = opt(
        None, "raise schedule: the share of groups to drive near zero (default: measured by a "
        "dry run of the pruning target on the input model)",
        Float(0, 1, open_low=True, optional=True), metavar="S")
    fade: str = opt("off", "off, or linear: fade the channel groups the params or MACs target "
                    "removes (chosen once, by a dry run of the target on the input model) "
                    "linearly to exactly zero during sparsity training, so that pruning them "
                    "changes no output; the regularizer still acts (lam may be 0)",
                    Choice(FADES, label="fade"))
    fade_end: float = opt(0.75, FADE_END_HELP, FADE_END, metavar="F")
    sparse_epochs: int = opt(20, "epochs of sparsity training (0: prune the input as is)",
                             Int(0))
    sparse_lr: float = opt(0.01, "peak learning rate of sparsity training", LR)
    threshold: float | None = opt(None, "remove every channel group scoring below T (the "
                                  "score of --group-score)", Float(0, optional=True),
                                  metavar="T")
    target_params_reduction: float | None = opt(
        None, "remove the lowest-scoring groups until params fall by at least the fraction R "
        "in [0, 1) (with --target-macs-reduction too: until both have fallen that far)", REDUCTION,
        metavar="R")
    target_macs_reduction: float | None = opt(
        None, "remove the lowest-scoring groups until MACs fall by at least the fraction R in "
        "[0, 1) (may be combined with --target-params-reduction)", REDUCTION, metavar="R")
    target_latency_reduction: float | None = opt(
        None, "remove the lowest-ranked groups until the latency the table of --latency-runtime "
        "predicts falls by at least the fraction R in [0, 1) (measured per conv layer on this "
        "machine at --latency-batch, cached)", REDUCTION, metavar="R")
    target_latency: float | None = opt(
        None, "remove the lowest-ranked groups until the predicted latency (as for "
        "--target-latency-reduction) is at most MS milliseconds per batch of --latency-batch",
        Float(0, open_low=True, optional=True), metavar="MS")
    auto_tolerance: float | None = opt(
        None, "choose the params reduction on the validation split: the largest of 5 %, "
        "10 %, ..., 95 % whose pruned copy of the sparse model (not fine-tuned) keeps val "
        "top-1 within T percentage points of the input run's (the scan stops at the first "
        "that does not)", Float(0, optional=True), metavar="T")
    group_score: str = opt("layer_rms", "what ranks the channel groups: layer_rms (each "
                           "layer's slice divided by that layer's mean channel RMS first, so "
                           "layers of different weight scale compare fairly), rms (raw RMS "
                           "norm) or taylor (the first-order loss change removing the group "
                           "causes, squared, over --taylor-batches training batches; summed "
                           "over the layers a group spans, the score to use with any --cost "
                           "other than none)", Choice(SCORES, label="group score"))
    taylor_batches: int = opt(32, "with --group-score taylor: training batches the score "
                              "reads", Int(1))
    round_to: int | str | None = opt(
        None, "keep every pruned layer's width a multiple of N channels (e.g. 8: onnxruntime "
        "computes convolutions in blocks of 8 or 16 channels, so odd widths cost time without "
        "accuracy), or auto: the step the latency table of --latency-runtime shows (default: "
        "exact widths; with --cost latency: auto, and 1 keeps exact widths)",
        RoundTo(optional=True), metavar="N|auto")
    cost: str = opt("none", "none: remove the lowest-scoring groups first; params, macs: rank "
                    "groups by score per param / MAC they save; latency: by score per unit "
                    "of latency they save (the latency table of --latency-runtime; HALP's "
                    "rule), with widths on the table's channel step unless --round-to is "
                    "given; any cost ranks for a params, MACs or latency target",
                    Choice(COSTS, label="ranking cost"))
    latency_runtime: str = opt("eager", RUNTIME_HELP, Choice(RUNTIMES, label="latency runtime"))
    latency_batch: int = opt(64, BATCH_HELP, Int(1))
    latency_check: str = opt("table", CHECK_HELP, Choice(CHECKS, label="latency check"))
    max_layer_reduction: float | None = opt(
        None, "remove at most the fraction F in (0, 1] of any layer's channels (every layer "
        "keeps ceil((1 - F) * width)), so no residual stream or inner width collapses to a few "
        "channels (default: no cap)", Float(0, 1, open_low=True, optional=True), metavar="F")
    reconstruct: int = opt(0, RECONSTRUCT_HELP, Int(0), metavar="N")
    reconstruct_ridge: float = opt(1e-3, RIDGE_HELP, Float(0))
    finetune_epochs: int = opt(20, "epochs of fine-tuning after pruning, no regularizer",
                               Int(0))
    finetune_lr: float = opt(0.01, "peak learning rate of fine-tuning", LR)
    prune_steps: int = opt(1, "prune in K steps instead of one: step k removes groups ranked "
                           "afresh on the model as it is then, until (1 - R)^(k/K) of the "
                           "input's params (or MACs) are left, and is followed by "
                           "--step-epochs of fine-tuning, the last by --finetune-epochs; needs "
                           "--target-params-reduction or --target-macs-reduction",
                           Int(1), metavar="K")
    step_epochs: int = opt(1, "with --prune-steps K > 1: fine-tuning epochs after each step "
                           "but the last (at --finetune-lr)", Int(0))
    epoch_size: int | None = opt(None, "training images per epoch (default: all)",
                                 Int(1, optional=True), cli=False)
    train: TrainConfig = field(default_factory=TrainConfig)

    def rule(self) -> dict[str, float]:
        """The one pruning rule, as keyword arguments of :func:`resprune.vacl.prune` (or
        ``auto_tolerance``)."""
        given = {k: float(getattr(self, k)) for k in RULES if getattr(self, k) is not None}
        if not one_rule(given):
            names = ", ".join("--" + k.replace("_", "-") for k in given) or "none"
            raise UserError("give exactly one of --threshold, --target-params-reduction, "
                            "--target-macs-reduction, --target-latency-reduction, "
                            "--target-latency and --auto-tolerance, or both "
                            f"--target-params-reduction and --target-macs-reduction (got {names})")
        return given

    def stage(self, name: str) -> TrainConfig:
        """The :class:`TrainConfig` of stage ``sparse``, ``finetune`` or ``step`` (the
        fine-tuning after a step of ``prune_steps`` but the last)."""
        if name == "step":
            return dataclasses.replace(self.train, epochs=self.step_epochs, lr=self.finetune_lr)
        return dataclasses.replace(self.train, epochs=getattr(self, f"{name}_epochs"),
                                   lr=getattr(self, f"{name}_lr"))

    def validate(self) -> VaclConfig:
        """Check every option; raise :class:`UserError` naming the first bad one."""
        check_fields(self)
        rule = self.rule()
        key = "target_params_reduction" if len(rule) > 1 else next(iter(rule))
        if self.cost == "latency" and not key.startswith("target_"):
            raise UserError("--cost latency ranks for a params, MACs or latency target; "
                            "--threshold and --auto-tolerance remove by score alone")
        if self.latency_check == "measured" and key not in ("target_latency_reduction",
                                                            "target_latency"):
            raise UserError("--latency-check measured checks a latency target: give "
                            "--target-latency-reduction or --target-latency")
        needs_target = {"fade": self.fade != "off", "reg_groups": self.reg_groups == "pruned"}
        if not key.startswith("target_"):
            if needs_target["fade"]:
                raise UserError("--fade needs --target-params-reduction or "
                                "--target-macs-reduction: the groups to fade come from a dry "
                                "run of the target")
            if needs_target["reg_groups"] or (self.lam_schedule == "raise"
                                              and self.lam_target_share is None):
                raise UserError("--reg-groups pruned and --lam-schedule raise (without "
                                "--lam-target-share) need a params or MACs target: the groups "
                                "to drive to zero come from a dry run of it")
        if self.prune_steps > 1 and (key not in ("target_params_reduction",
                                                 "target_macs_reduction")
                                     or self.cost == "latency" or self.round_to == "auto"):
            raise UserError("--prune-steps above 1 splits a params or MACs target into "
                            "steps: give --target-params-reduction or --target-macs-reduction, "
                            "and no latency table (--cost latency, --round-to auto)")
        if not isinstance(self.train, TrainConfig):
            raise UserError(f"train must be a resprune.train.TrainConfig, got "
                            f"{type(self.train).__name__}")
        self.stage("sparse").validate()
        self.stage("finetune").validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
