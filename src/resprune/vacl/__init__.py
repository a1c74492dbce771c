"""VACL width pruning: cross-layer channel groups, variance-aware regularizer, pruning.

Pipeline (see ``docs/vacl.md``): start from a trained
model, sparsity-train with :class:`Regularizer` added to the loss, score channel groups by RMS
(:func:`group_scores`), remove the weakest with :func:`prune` (by threshold or down to a target
reduction of params or MACs), then fine-tune without the regularizer.

Use inside your own training loop::

    import torch, torch.nn.functional as F
    import resprune
    from resprune import vacl

    model = resprune.load("runs/resnet56")                 # or any Conv/BN/Linear ResNet
    reg = vacl.Regularizer(model, form="moments", beta=4.0, lam=1e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)     # or + reg(model) (= lam * R) as a loss term
        opt.zero_grad(); loss.backward()
        reg.add_grad_(model)                    # the same gradient, added in a few fused ops
        opt.step()

    original = resprune.load("runs/resnet56")
    report = vacl.prune(model, (3, 32, 32), target_params_reduction=0.5)
    print(report["params_before"], "->", report["params_after"])
    vacl.reconstruct(original, model, loader, 1024, report["kept_out_channels"])  # optional
    resprune.save(model, "runs/resnet56-vacl")            # a plain, smaller ResNet
    # ... fine-tune with a fresh optimizer (and no regularizer) ...

With resprune's trainer pass it as a loss term: ``Trainer(..., loss_terms=[reg])`` (the
trainer applies it through ``add_grad_``).

Or the whole pipeline (sparsity training -> pruning -> fine-tuning, resumable, the run
directory ``resprune vacl`` writes)::

    result = vacl.run_pipeline(model, data, vacl.VaclConfig(target_params_reduction=0.5),
                               out="runs/resnet56-vacl")

Before a long run, :func:`plan` shows what the rule removes under each ranking cost (params and
MACs), without training or writing anything.
"""

from ..train.reconstruction import reconstruct  # with prune's kept_out_channels
from .config import VaclConfig
from .fade import group_slices
from .groups import (
    CROSS,
    FILTER,
    ChannelGroup,
    GroupSet,
    Member,
    PadShortcutPruner,
    discover_groups,
)
from .pipeline import VaclResult, run_pipeline
from .plan import PLAN_COSTS, plan
from .prune import prune, remove_members
from .regularizer import FORMS, SCORES, Regularizer, group_scores
from .schedule import LAM_SCHEDULES, LamSchedule, near_zero_share

__all__ = [
    "CROSS", "FILTER", "FORMS", "LAM_SCHEDULES", "ChannelGroup", "GroupSet", "LamSchedule",
    "Member", "PadShortcutPruner", "Regularizer", "SCORES", "discover_groups", "group_scores",
    "group_slices", "VaclConfig", "VaclResult", "run_pipeline",
    "near_zero_share", "PLAN_COSTS", "plan", "prune", "reconstruct", "remove_members",
]
