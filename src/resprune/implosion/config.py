"""Options of the Network Implosion loop (:class:`ImplosionConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..fields import LR, LR_OR_NONE, Choice, Flag, Float, Int, check_fields, opt
from ..measure.latency_table import BATCH_HELP, COSTS, RUNTIME_HELP, RUNTIMES
from ..train import TrainConfig
from ..train.fade import FADE_END, FADE_END_HELP
from ..train.reconstruction import RECONSTRUCT_HELP, RIDGE_HELP
from .scores import SCORE_METHODS

ERASE_MODES = ("cut", "fade")
RETRAIN_MODES = ("always", "needed")


@dataclass
class ImplosionConfig:
    """How units are scored, erased, retrained and accepted.

    score: priority term (``gate`` = |w|, ``norm``, ``gate_bn``, ``random``; see
        :mod:`resprune.implosion.scores`). score_batches: batches of the training loader the
        ``norm`` score reads.
    per_step: units erased per step (the k lowest priorities).
    retrain_epochs / retrain_lr: the short retraining after each erasure, at a lowered
        learning rate (no warm-up).
    tolerance: accept a step when val top-1 >= baseline val top-1 - tolerance, in percentage
        points (>= 0; 0.5 allows 93.0 % -> 92.5 %); otherwise roll back to the last accepted
        net. patience: stop after this many rejected steps in a row (1: at the first, the
        original rule); after a rejection the rejected units are no longer candidates, so the
        next step tries the next-lowest priorities.
    screen: before retraining, erase each of the ``screen`` lowest-priority candidates alone
        and measure the validation loss on ``screen_batches`` batches (no training); erase
        the ``per_step`` whose removal costs least. 0 (default): erase by priority alone. On
        a converged net this is cheap and catches units whose gate is small but whose
        removal hurts. screen_cost: rank the screened candidates by the rise of their loss
        over the intact net's (scored on the same batches, with the same re-estimation) per
        param, MAC or unit of latency the unit frees (``none``, default: by loss alone);
        independent of ``cost``, which ranks the priorities that choose who is screened.
        screen_rounds: choose the ``per_step`` units in this many rounds (at most
        ``per_step``); each round screens the remaining candidates with the units chosen in
        earlier rounds already erased and takes its share. 1 (default): every candidate
        screened alone, once; ``per_step``: greedy, one unit a round (screening costs about
        that many times more; no training).
    recalibrate: before each evaluation of a net cut without training (every ``screen``
        candidate; ``retrain="needed"``'s check), re-estimate its BatchNorm statistics on this
        many training images (:func:`resprune.measure.recalibrate_batchnorm`; the same images
        for every candidate of a step). A screened candidate's statistics are put back after
        it is scored; a step ``needed`` accepts without training keeps the re-estimated ones.
        With ``erase="cut"`` a step that retrains is also measured right after its cut, its
        statistics re-estimated the same way (recorded as the step's ``cut_val_top1``; the
        retraining's weights do not depend on them). 0 (default): the statistics learnt
        before the cut, which no longer fit the cut net (on the converged ResNet-56 they made
        stage-1 units look 2-10 points costlier than re-estimated: ``docs/implosion.md``).
    reconstruct: with ``erase="cut"``, re-fit every remaining conv and linear layer right
        after each cut, by least squares on this many training images (read under the step's
        seed), to reproduce the net before the cut (:func:`resprune.train.reconstruct`); the
        step is then measured right after the cut (``cut_val_top1``; the re-fit replaces
        ``recalibrate`` there) and records ``reconstruction``. ``retrain="needed"`` keeps the
        re-fit net when it holds and puts back the net before the cut when not. 0 (default):
        off. ``reconstruct_ridge``: the fits' penalty relative to the inputs' mean energy.
    erase: how a step removes its units. ``cut`` (default, the paper's order): replace them by
        identities, then retrain. ``fade``: retrain first while their priority gates fall
        linearly to exactly zero (:class:`resprune.train.Fade`; zero after ``fade_end`` of
        the retraining's steps), then replace them by identities, which changes no output;
        the net learns to do without them gradually instead of recovering from a cut.
    target_depth: stop once the net has at most this many weight layers (a step erases no
        more units than needed to reach it). max_steps: stop after this many steps.
    final_epochs / final_lr: optional longer retrain of the final net (final_lr defaults to
        retrain_lr).
    adapt_epochs / adapt_lr: when the model arrives without gates, they are added (w = 1,
        exact) and trained this long so they can adapt (adapt_lr defaults to retrain_lr).
    fold: fold the surviving gates into their branch's last BN at the end (exported nets
        carry no extra op).
    seed: seeds every retraining (step k uses seed + k), the ``random`` score and the batches
        the ``norm`` score reads, so a resumed run repeats an uninterrupted one.
    train: base :class:`resprune.train.TrainConfig` (optimizer, schedule, batch size,
        precision, device) for every retraining; epochs, lr, warm-up and seed are set by the
        fields above.
    """

    score: str = opt("gate", "priority term: gate = |w| (default), norm = mean ||w F(x)|| over "
                     "training batches, gate_bn = |w| * ||gamma of the branch's last BN||, "
                     "random = ablation baseline", Choice(SCORE_METHODS, label="priority score"))
    per_step: int = opt(1, "units erased per step", Int(1))
    retrain_epochs: int = opt(10, "retraining epochs after each erasure (0: no retraining)",
                              Int(0))
    retrain_lr: float = opt(0.01, "learning rate of every retraining, lowered from "
                            "training's, no warm-up", LR)
    tolerance: float = opt(0.0, "accept a step when val top-1 >= start net's val top-1 minus "
                           "this many percentage points", Float(0))
    patience: int = opt(1, "stop after this many rejected steps in a row; after a rejection "
                        "the next-lowest priorities are tried (1: stop at the first)", Int(1))
    screen: int = opt(0, "erase each of the N lowest-priority units alone, score the "
                      "validation loss without training, and erase the --per-step cheapest "
                      "(0: by priority alone)", Int(0), metavar="N")
    cost: str = opt("none", "none: erase the lowest priorities; params, macs: the lowest "
                    "priority per param / MAC the unit holds; latency: per unit of latency "
                    "the unit's convolutions take (the latency table of --latency-runtime), "
                    "so slow units go first",
                    Choice(COSTS, label="ranking cost"))
    screen_cost: str = opt("none", "rank the --screen candidates by how much each one's "
                           "removal raises the validation loss over the intact net's, per "
                           "param / MAC / unit of latency it frees (so big units that cost "
                           "little per size go first); none: by the loss alone",
                           Choice(COSTS, label="screen cost"))
    screen_rounds: int = opt(1, "choose the --per-step units in R rounds (at most "
                             "--per-step): each round screens the remaining candidates with "
                             "the units chosen before it already erased, and takes its share "
                             "of the cheapest; 1: each candidate screened alone, once",
                             Int(1), metavar="R")
    latency_runtime: str = opt("eager", RUNTIME_HELP, Choice(RUNTIMES, label="latency runtime"))
    latency_batch: int = opt(64, BATCH_HELP, Int(1))
    screen_batches: int = opt(4, "validation batches each screened candidate is scored on",
                              Int(1))
    recalibrate: int = opt(0, "re-estimate BatchNorm statistics on N training images before "
                           "each evaluation of a net cut without training (--screen "
                           "candidates, --retrain needed's check, and with --erase cut each "
                           "step's net right after its cut, before retraining); 0: keep the "
                           "statistics learnt before the cut", Int(0), metavar="N")
    reconstruct: int = opt(0, RECONSTRUCT_HELP, Int(0), metavar="N")
    reconstruct_ridge: float = opt(1e-3, RIDGE_HELP, Float(0))
    erase: str = opt("cut", "cut: replace a step's units by identities, then retrain; fade: "
                     "retrain while their priority gates fall linearly to exactly zero, then "
                     "replace them (no output changes), so the net adapts gradually",
                     Choice(ERASE_MODES, label="erase mode"))
    fade_end: float = opt(0.75, FADE_END_HELP, FADE_END, metavar="F")
    retrain: str = opt("always", "always: retrain after every erasure (by --erase); needed: "
                       "first cut the step's units and evaluate without training, accept the "
                       "step at once when val top-1 holds, and retrain (by --erase) only when "
                       "it does not: a converged net loses little per unit, and every "
                       "retraining costs samples and drifts",
                       Choice(RETRAIN_MODES, label="retrain mode"))
    target_depth: int | None = opt(None, "stop once the net has at most this many weight "
                                   "layers (default: none)", Int(1, optional=True),
                                   metavar="LAYERS")
    max_steps: int | None = opt(None, "stop after this many steps (default: none)",
                                Int(1, optional=True))
    final_epochs: int = opt(0, "longer retraining of the final net", Int(0))
    final_lr: float | None = opt(None, "learning rate of the final retraining (default: "
                                 "--retrain-lr)", LR_OR_NONE)
    adapt_epochs: int = opt(5, "when the input has no priority gates: they are added (w = 1, "
                            "logits unchanged) and trained this many epochs before step 1",
                            Int(0))
    adapt_lr: float | None = opt(None, "learning rate of the gate adaptation (default: "
                                 "--retrain-lr)", LR_OR_NONE)
    score_batches: int = opt(4, "training batches the norm score reads", Int(1))
    fold: bool = opt(True, "fold the surviving gates into their branch's last BN at the end",
                     Flag(), cli=False)
    seed: int = opt(0, "seeds every retraining (step k: seed + k)", Int(0), cli=False)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> ImplosionConfig:
        """Check every option; raise :class:`UserError` naming the first bad one."""
        check_fields(self)
        if self.screen_cost != "none" and self.screen == 0:
            raise UserError(f"screen_cost {self.screen_cost} ranks the screened candidates: "
                            "give screen >= 1 (--screen N)")
        if self.screen_rounds > 1 and self.screen == 0:
            raise UserError(f"screen_rounds {self.screen_rounds} screens in rounds: give "
                            "screen >= 1 (--screen N)")
        if self.erase == "fade" and self.reconstruct:
            raise UserError("reconstruct re-fits the net after a cut; erase fade changes no "
                            "output when it erases: use erase cut (--erase cut)")
        if self.erase == "fade" and self.retrain_epochs == 0:
            raise UserError("erase fade fades the units during the retraining: give "
                            "retrain_epochs >= 1")
        if not isinstance(self.train, TrainConfig):
            raise UserError(f"train must be a resprune.train.TrainConfig, got "
                            f"{type(self.train).__name__}")
        # epochs, lr, warm-up and seed are set per retraining
        dataclasses.replace(self.train, warmup_epochs=0).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
