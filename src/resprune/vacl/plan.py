"""What a pruning rule would remove under each ranking cost, before any training: a plan.

A target names one quantity (params, or MACs); what happens to the others depends on the
ranking. On the converged ResNet-56 of ``benchmarks/cifar10_jpeg_resnet56.py``, 85 % fewer
params removed 78.7 % of MACs ranked by Taylor score alone but 67.9 % ranked per param saved
(``cost="params"``). :func:`plan` shows this in seconds, before a run of hours: it ranks the
model's channel groups once (``config.group_score``; ``"taylor"`` reads
``config.taylor_batches`` training batches) and applies ``config``'s rule to a copy of the
model under each ranking cost. Nothing is trained or written::

    from resprune.vacl import VaclConfig, plan

    for row in plan(model, data, VaclConfig(target_params_reduction=0.85,
                                            group_score="taylor"), recalibrate=2048):
        print(row["cost"], row["params_reduction"], row["macs_reduction"], row["val_top1"])

With ``recalibrate=N`` each row's pruned model also has its BatchNorm statistics re-estimated
on ``N`` training images (:func:`resprune.measure.recalibrate_batchnorm`) and is scored on the
validation split (``val_top1``, ``val_loss``): without that every ranking scores about chance
right after a deep cut; with it a ranking that scores clearly lower can be ruled out before a
run of hours is spent on it (``docs/vacl.md``, "Comparing rankings before training").

The input is ranked as it is. That is what a run with ``sparse_epochs=0`` and
``prune_steps=1`` prunes, exactly; sparsity training and later steps of ``prune_steps`` rank
other weights, so their pruning differs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..data import resolve_loaders
from ..errors import UserError
from ..measure._device import resolve_device
from ..measure.accuracy import evaluate
from ..measure.batchnorm import recalibrate_batchnorm
from .config import VaclConfig
from .groups import discover_groups
from .prune import prune
from .regularizer import DATA_SCORES, group_scores

# the rankings a plan compares: those of the analytic size model (latency needs a table
# measured on the machine, see resprune.measure.latency_table)
PLAN_COSTS = ("none", "params", "macs")
# what each plan row keeps of the prune report
ROW_KEYS = ("mode", "target_reduction", "target_reached", "groups_total", "groups_removed",
            "removed_by_kind", "units_skipped_to_keep_layers", "params_before", "params_after",
            "params_reduction", "macs_before", "macs_after", "macs_reduction", "widths_after")


def plan(model: nn.Module, data: Any, config: VaclConfig | None = None, *,
         costs: Sequence[str] = PLAN_COSTS,
         input_shape: tuple[int, ...] | None = None,
         recalibrate: int = 0) -> list[dict[str, Any]]:
    """One row per ranking cost in ``costs``: what ``config``'s rule removes from ``model``.

    ``data``: as for :func:`resprune.vacl.run_pipeline` (only the training loader is read, and
    only by a data-dependent ``group_score``). Each row holds ``cost`` and the prune report's
    :data:`ROW_KEYS` (see :func:`resprune.vacl.prune`); ``model`` is left unchanged. A
    ``threshold`` removes by score alone, so it has one row, ``cost="none"``. With
    ``recalibrate`` > 0 each row also holds ``val_top1`` and ``val_loss`` of its pruned model
    on the validation split after BatchNorm re-estimation on ``recalibrate`` training images,
    and ``recalibrated_on``, the images read.
    """
    config = (config or VaclConfig()).validate()
    target = config.rule()
    if set(target) & {"auto_tolerance", "target_latency_reduction", "target_latency"} or (
            config.cost == "latency" or config.round_to == "auto"):
        raise UserError("a plan compares rankings on the analytic size model: give "
                        "--threshold, --target-params-reduction or --target-macs-reduction "
                        "(or both), without --cost latency or --round-to auto (latency needs "
                        "a table measured on this machine; --auto-tolerance evaluates "
                        "candidates)")
    unknown = [c for c in costs if c not in PLAN_COSTS]
    if unknown or not costs:
        raise UserError(f"plan costs must be some of {', '.join(PLAN_COSTS)}, got "
                        f"{', '.join(map(str, costs)) or 'none'}")
    if recalibrate < 0:
        raise UserError(f"a plan re-estimates BatchNorm on 0 (off) or more training images, "
                        f"got {recalibrate}")
    if "threshold" in target:
        costs = ("none",)
    t = config.train
    loaders, shape, _ = resolve_loaders(
        data, batch_size=t.batch_size, device=resolve_device(t.device), seed=t.seed,
        channels_last=t.channels_last, epoch_size=config.epoch_size, input_shape=input_shape)
    groups = discover_groups(model, shape)
    scores = group_scores(model, groups, config.include_bn, config.include_consumers,
                          config.group_score,
                          loader=loaders.train if config.group_score in DATA_SCORES else None,
                          batches=config.taylor_batches, seed=t.seed)
    if recalibrate and getattr(loaders.val, "num_samples", 1) == 0:
        raise UserError("scoring a plan's rows needs a validation split, which is empty: "
                        "raise --val-fraction")
    rows = []
    for cost in costs:
        pruned = copy.deepcopy(model)
        report = prune(pruned, shape, groups=groups, include_bn=config.include_bn,
                       include_consumers=config.include_consumers, score=config.group_score,
                       round_to=config.round_to,
                       max_layer_reduction=config.max_layer_reduction, cost=cost,
                       scores=scores, **target)
        row = {"cost": cost, **{k: report[k] for k in ROW_KEYS}}
        if recalibrate:
            row["recalibrated_on"] = recalibrate_batchnorm(pruned, loaders.train, recalibrate,
                                                           seed=t.seed)
            scored = evaluate(pruned, loaders.val)
            row["val_top1"], row["val_loss"] = scored["top1"], scored["loss"]
        rows.append(row)
    return rows
