"""Which units a step erases: the k lowest priorities (or priorities per ms, param or MAC,
with ``cost``), optionally screened by validation loss (or by its rise per ms, param or MAC,
with ``screen_cost``), in one round or several (``screen_rounds``: each round screens with
the units chosen before it already erased)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..measure.batchnorm import batchnorm_statistics, recalibrate_batchnorm
from .erase import set_submodule

log = logging.getLogger("resprune.implosion")


def select(scores: dict[str, float], depths: dict[str, int], k: int, depth: int,
           target: int | None) -> list[str]:
    """The k lowest-priority units (ties: module order), no more than needed for ``target``."""
    order = {n: i for i, n in enumerate(scores)}
    ranked = sorted(scores, key=lambda n: (scores[n], order[n]))
    chosen = []
    for name in ranked[:k]:
        if target is not None and depth <= target:
            break
        chosen.append(name)
        depth -= depths[name]
    return chosen


@contextmanager
def _untrained_scores(run: Any, seed: int) -> Iterator[Callable[[], float]]:
    """``score()``: the validation loss of ``run.model`` as it is now, on ``screen_batches``
    batches in eval mode; with ``recalibrate`` its BatchNorm statistics are first
    re-estimated on that many training images (read under ``seed``: the same images every
    call) and put back afterwards. The model's train/eval mode comes back on exit."""
    cfg, model = run.config, run.model
    was_training = model.training
    saved = batchnorm_statistics(model) if cfg.recalibrate else None

    def score() -> float:
        try:
            if saved is not None:
                recalibrate_batchnorm(model, run.train_loader, cfg.recalibrate, seed)
            return _loss_on(model, run.val_loader, cfg.screen_batches)
        finally:
            if saved is not None:
                model.load_state_dict(saved, strict=False)

    model.eval()
    try:
        yield score
    finally:
        model.train(was_training)


def screen(run: Any, candidates: dict[str, float], seed: int = 0) -> dict[str, float]:
    """Validation loss with each of the ``screen`` lowest-priority units erased alone.

    No training: the unit is swapped for an identity, ``screen_batches`` validation batches
    are scored, and it is put back. With ``recalibrate`` the net's BatchNorm statistics are
    first re-estimated on that many training images (read under ``seed``: the same images
    for every candidate) and put back afterwards. Returns ``{name: loss}``, lowest first.
    """
    cfg, model = run.config, run.model
    order = {n: i for i, n in enumerate(candidates)}
    ranked = sorted(candidates, key=lambda n: (candidates[n], order[n]))[:cfg.screen]
    out = {}
    with _untrained_scores(run, seed) as score:
        for name in ranked:
            unit = model.get_submodule(name)
            set_submodule(model, name, nn.Identity())
            try:
                out[name] = score()
            finally:
                set_submodule(model, name, unit)
    log.info("screened %d candidates by validation loss%s: %s", len(out),
             f" (BatchNorm re-estimated on {cfg.recalibrate} images)" if cfg.recalibrate
             else "",
             ", ".join(f"{n} {v:.4f}" for n, v in sorted(out.items(), key=lambda x: x[1])))
    return dict(sorted(out.items(), key=lambda x: (x[1], order[x[0]])))


def round_sizes(k: int, rounds: int) -> list[int]:
    """How many of a step's ``k`` units each screening round chooses: ``rounds`` (at most
    ``k``) shares as equal as possible, the larger first (12 in 5 rounds: 3, 3, 2, 2, 2)."""
    rounds = max(1, min(rounds, k))
    return [k // rounds + (1 if i < k % rounds else 0) for i in range(rounds)]


def screened_choice(run: Any, candidates: dict[str, float], depths: dict[str, int],
                    depth: int, seed: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The units a step erases when ``screen`` is on, and one record a round.

    Round r erases the units chosen in rounds 1..r-1 (identities), screens the ``screen``
    lowest priorities among the rest (:func:`screen`; BatchNorm re-estimated with the earlier
    choices cut), ranks them by loss or, with ``screen_cost``, by loss rise over the net as it
    stands per cost, and takes its share (:func:`round_sizes`) of the cheapest; every unit is
    put back before returning. One round (the default) screens each candidate alone; with
    ``per_step`` rounds the choice is greedy: each unit is chosen knowing the others cut, so
    units that only hurt together (a stage losing most of its units at once) are not all
    taken. A round's record: ``erased_before``, ``loss`` and, with ``screen_cost``,
    ``intact`` (the loss of the net with ``erased_before`` cut) and ``rank``, and
    ``chosen``."""
    cfg, model = run.config, run.model
    chosen: list[str] = []
    rounds: list[dict[str, Any]] = []
    for share in round_sizes(cfg.per_step, cfg.screen_rounds):
        rest = {n: v for n, v in candidates.items() if n not in chosen}
        now = depth - sum(depths[n] for n in chosen)
        if not rest or (cfg.target_depth is not None and now <= cfg.target_depth):
            break
        units = {n: model.get_submodule(n) for n in chosen}
        for n in chosen:
            set_submodule(model, n, nn.Identity())
        try:
            losses = screen(run, rest, seed)
            record: dict[str, Any] = {"erased_before": list(chosen), "loss": losses}
            ranking = losses
            if run.screen_cost is not None:
                intact = intact_loss(run, seed)
                ranking = rise_per_cost(losses, intact, run.screen_cost)
                record.update(intact=intact, rank=ranking)
                log.info("screened candidates per %s freed, by validation-loss rise over "
                         "the net's %.4f: %s", cfg.screen_cost, intact,
                         ", ".join(f"{n} {v:.3g}" for n, v in sorted(ranking.items(),
                                                                       key=lambda x: x[1])))
        finally:
            for n, unit in units.items():
                set_submodule(model, n, unit)
        picked = select(ranking, depths, share, now, cfg.target_depth)
        record["chosen"] = picked
        rounds.append(record)
        chosen += picked
    return chosen, rounds


def intact_loss(run: Any, seed: int = 0) -> float:
    """The validation loss the screen's losses rise from: the intact net scored like every
    candidate (same batches; with ``recalibrate``, statistics re-estimated on the same
    images, then put back)."""
    with _untrained_scores(run, seed) as score:
        return score()


def rise_per_cost(losses: dict[str, float], intact: float, costs: dict[str, float]
                  ) -> dict[str, float]:
    """How much each screened unit's removal raises the validation loss over the intact
    net's, per unit of its cost: a big unit that costs little per param, MAC or ms it frees
    ranks before a small one that costs a little more in all."""
    return per_cost({n: v - intact for n, v in losses.items()}, costs)


@torch.no_grad()
def _loss_on(model: nn.Module, loader: Iterable, batches: int) -> float:
    """Mean cross-entropy of ``model`` on the first ``batches`` batches of ``loader``.

    Under torchrun a resprune loader holds one process's block of the split: each process
    scores the part of those first samples that lies in its block and the sums are
    all-reduced, so the loss is the one a single process computes.
    """
    dev = next(model.parameters()).device
    shard, size = getattr(loader, "shard", None), getattr(loader, "batch_size", None)
    limit = None
    if shard is not None and size is not None:
        start, stop = shard.block(loader.num_samples)
        limit = max(0, min(stop, batches * size) - start)
    total = torch.zeros(2, dtype=torch.float64, device=dev)  # loss sum, samples
    for i, (x, y) in enumerate(loader):
        if limit is None and i >= batches:
            break
        if limit is not None:
            take = limit - int(total[1].item())
            if take <= 0:
                break
            x, y = x[:take], y[:take]
        x, y = x.to(dev), y.to(dev)
        total[0] += torch.nn.functional.cross_entropy(model(x).float(), y,
                                                      reduction="sum").double()
        total[1] += y.shape[0]
    distributed.all_reduce_sum(total)
    return float(total[0] / total[1].clamp(min=1))




def unit_costs(run_dir: Path, model: nn.Module, input_shape: tuple[int, ...], config: Any,
               cost: str | None = None) -> dict[str, float]:
    """What each erasable unit costs, by ``cost`` (default ``config.cost``): ``"latency"``,
    its convolutions' predicted time (ms per batch of the run's latency table, measured on
    ``model`` with ``config``'s runtime and batch and kept in ``run_dir``); ``"params"`` /
    ``"macs"``, its conv and linear layers' params / MACs per image."""
    from .gates import erasable_items

    cost = config.cost if cost is None else cost
    names = [n for n, _ in erasable_items(model)]
    if cost in ("params", "macs"):
        from ..measure import count_macs, count_params
        from ..vacl.ranking import SizeModel

        sizes = SizeModel(model, input_shape, count_params(model),
                          count_macs(model, input_shape))
        size = sizes.params if cost == "params" else sizes.macs
        return {u: float(sum(size(n) for n in sizes.mods if n.startswith(u + ".")))
                for u in names}
    from ..measure import latency_table

    run_dir.mkdir(parents=True, exist_ok=True)
    table = latency_table.run_table(run_dir, model, input_shape, config.latency_runtime,
                                    config.latency_batch)
    return latency_table.unit_latency(table, model, input_shape, names)


def per_cost(priorities: dict[str, float], costs: dict[str, float]) -> dict[str, float]:
    """Priority per unit of cost: of two units with equal priority the costlier goes first."""
    return {n: v / max(costs.get(n, 0.0), 1e-9) for n, v in priorities.items()}
