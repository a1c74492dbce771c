"""Torch-Pruning baselines for the VACL benchmark, trained with resprune's Trainer and data.

Two methods of torch-pruning 1.6.1, each used the way its documentation shows:

* ``groupnorm``: DepGraph's group-sparsity learning, ``tp.pruner.GroupNormPruner`` with
  ``tp.importance.GroupMagnitudeImportance(p=2)``. Sparsity training calls
  ``pruner.regularize(model)`` between ``loss.backward()`` and ``optimizer.step()`` (here: a
  Trainer callback wraps the optimizer's ``step``), then ``pruner.step()`` prunes, then the
  net is fine-tuned without the regularizer.
* ``magnitude``: ``tp.pruner.BasePruner`` (``MagnitudePruner`` is its deprecated alias) with
  the same importance, no sparsity training: the baseline is pruned at once and fine-tuned
  for the sparsity *and* fine-tuning epochs, so every row trains the same number of epochs.

Both prune globally (one ranking over all layers, torch-pruning's ``global_pruning=True``)
and leave the classifier alone. Torch-pruning's ``pruning_ratio`` is a fraction of
*channels*; :func:`match_ratio` bisects it until the params reduction reaches the requested
one (the VACL row's), so the rows compare at the same size.

Option-A (zero-padding) shortcuts: torch-pruning alone traces resprune's ``PadShortcut``
(an ``index_select`` into ``[x, 0]``) as a channel-preserving op. Pruned that way, a ResNet
with option-A shortcuts no longer runs (measured on ResNet-20 at ratio 0.3: "INDICES element
is out of DATA bounds"). Torch-pruning's documented extension point for such layers is
``customized_pruners``; we register resprune's ``PadShortcutPruner`` there and add the two
index-map dependencies of :func:`resprune.vacl.groups._couple_pad_channels` to the pruner's
graph, exactly what resprune's own group discovery does. Everything else (importance,
ranking, regularizer, removal) is torch-pruning's.

Run directories use resprune's format (``model.safetensors`` + ``arch.json``,
``metrics.jsonl``, ``summary.json`` with ``kind`` ``torch_pruning``) and the same stage
layout as ``resprune vacl`` (``stages/sparse``, ``stages/pruned``, ``stages/finetune``), so
a killed job resumes where it stopped.

    .venv/bin/python benchmarks/_tp_baselines.py BASE_RUN --method groupnorm \\
        --params-reduction 0.5 --sparse-epochs 3 --finetune-epochs 2 --out OUT
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

import resprune
from resprune.data import input_shape, load_dataset, make_loader
from resprune.io import atomic_write_json, atomic_write_text, read_json
from resprune.measure import count_macs, count_params, depth, evaluate, latency
from resprune.measure._device import resolve_device
from resprune.models import PadShortcut
from resprune.report import pct_removed
from resprune.runs import read_summary, write_summary
from resprune.runstate import fingerprint
from resprune.train import STATE_FILE as TRAIN_STATE_FILE
from resprune.train import Callback, Distillation, TrainConfig, Trainer
from resprune.vacl.groups import PadShortcutPruner, _couple_pad_channels

METHODS = ("groupnorm", "magnitude")
STATE_FILE = "pipeline_state.json"
RATIO_GRID = 0.05  # coarse scan of the channel ratio
RATIO_STEPS = 8  # then bisection: the ratio to ~2e-4


def make_pruner(method: str, model: nn.Module, shape, ratio: float, reg: float):
    """A torch-pruning pruner for ``model`` (global ranking, fc ignored, PadShortcut known)."""
    pad = PadShortcutPruner()
    cls = tp.pruner.GroupNormPruner if method == "groupnorm" else tp.pruner.BasePruner
    kwargs: dict[str, Any] = {"reg": reg} if method == "groupnorm" else {}
    p = next(model.parameters())
    example = torch.randn(1, *shape, device=p.device, dtype=p.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = cls(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                     global_pruning=True, pruning_ratio=ratio, ignored_layers=[model.fc],
                     customized_pruners={PadShortcut: pad}, **kwargs)
    _couple_pad_channels(pruner.DG, pad)  # zero-padding shortcuts map channels by index
    if method == "groupnorm":
        pruner.update_regularizer()  # its groups were listed before the coupling
    return pruner


def prune_copy(method: str, model: nn.Module, shape, ratio: float) -> nn.Module:
    net = copy.deepcopy(model)
    pruner = make_pruner(method, net, shape, ratio, reg=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    return net


def match_ratio(method: str, model: nn.Module, shape, target: float,
                metric: str = "params") -> tuple[float, nn.Module]:
    """Smallest channel ratio found whose ``metric`` (params or MACs) reduction is >=
    ``target``.

    The reduction is not monotone in torch-pruning's ratio near its top (groups that would
    empty a layer are then left whole), so a coarse upward scan finds the first grid ratio
    that reaches the target and a bisection refines it between that ratio and the previous.
    """
    def size(net: nn.Module) -> int:
        return count_params(net) if metric == "params" else count_macs(net, shape)

    p0 = size(model)

    def reduction(net: nn.Module) -> float:
        return 1 - size(net) / p0

    lo, hi, best, most = 0.0, None, None, (-1.0, 0.0, None)
    for k in range(1, int(1 / RATIO_GRID)):
        r = round(k * RATIO_GRID, 6)
        net = prune_copy(method, model, shape, r)
        red = reduction(net)
        if red > most[0]:
            most = (red, r, net)
        if red >= target:
            hi, best = r, net
            break
        lo = r
    if hi is None:  # cannot reach it: take the most torch-pruning removes here
        return most[1], most[2]
    for _ in range(RATIO_STEPS):
        mid = (lo + hi) / 2
        net = prune_copy(method, model, shape, mid)
        if reduction(net) >= target:
            hi, best = mid, net
        else:
            lo = mid
    return hi, best


class Regularize(Callback):
    """Apply ``pruner.regularize(model)`` after backward, before every optimizer step."""

    def __init__(self, pruner):
        self.pruner = pruner

    def on_fit_start(self, trainer) -> None:
        opt, step = trainer.optimizer, trainer.optimizer.step
        model, pruner = trainer.model, self.pruner

        def regularized_step(*args, **kwargs):
            pruner.regularize(model)
            return step(*args, **kwargs)

        opt.step = regularized_step


def _accuracy(model: nn.Module, val, test) -> dict[str, Any]:
    """Top-1/5 on ``test`` and top-1 on ``val``, the model evaluated on the loaders' device
    (and left where it was)."""
    home = next(model.parameters()).device
    model.to(test.device)
    r = evaluate(model, test)
    out = {"top1": r["top1"], "top5": r["top5"],
           "val_top1": evaluate(model, val)["top1"] if val.num_samples else None}
    model.to(home)
    return out


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _fit(model, train, val, cfg, run_dir: Path, callbacks=(),
         distill=None) -> tuple[nn.Module, list]:
    trainer = Trainer(model, train, val, cfg, run_dir=run_dir, callbacks=list(callbacks),
                      progress=False, distill=distill)
    history = trainer.fit(resume=(run_dir / TRAIN_STATE_FILE).is_file())
    return trainer.model, history


def run(base_run: str | Path, out: str | Path, method: str, params_reduction: float,
        sparse_epochs: int, finetune_epochs: int, sparse_lr: float = 0.01,
        finetune_lr: float = 0.01, reg: float = 5e-4, batch_size: int = 128,
        channels_last: bool = False, metric: str = "params", epoch_size: int | None = None,
        distill_alpha: float = 0.0, distill_temperature: float = 4.0,
        device: str = "cpu") -> dict[str, Any]:
    """Run one baseline into ``out`` (resuming what a killed run left); return its summary.

    ``metric``: match ``params_reduction`` on params (default) or MACs. ``epoch_size``:
    training images per epoch (as ``--epoch-size``). ``distill_alpha`` > 0: every training
    distils from the base model, as ``--distill-from input``. ``device``: where the data
    lives and every training and evaluation runs (cpu, cuda or auto); pruning, counting and
    the latency column stay on the CPU.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    started = time.time()
    base_run, out = Path(base_run), Path(out)
    base_summary = read_summary(base_run)
    data = base_summary["data"]
    base_model = resprune.load(base_run)
    bundle = load_dataset(data["name"], data["data_dir"], val_fraction=data["val_fraction"],
                          seed=data["seed"], preprocess=base_model.preprocess)
    seed, shape = int(data["seed"]), input_shape(bundle)
    device = str(resolve_device(device))
    loader = dict(device=device, seed=seed, channels_last=channels_last)
    train = make_loader(bundle, "train", batch_size, train=True, epoch_size=epoch_size,
                        **loader)
    distill = Distillation(base_model, distill_alpha, distill_temperature) \
        if distill_alpha > 0 else None
    val = make_loader(bundle, "val", max(batch_size, 256), train=False, **loader)
    test = make_loader(bundle, "test", max(batch_size, 256), train=False, **loader)

    def config(epochs: int, lr: float) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, device=device,
                           seed=seed, channels_last=channels_last)

    # magnitude: no sparsity training, its epochs go to fine-tuning (same total budget)
    s_epochs = sparse_epochs if method == "groupnorm" else 0
    f_epochs = finetune_epochs if method == "groupnorm" else sparse_epochs + finetune_epochs
    model = resprune.load(base_run)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    state = read_json(state_path, "pipeline state") if state_path.is_file() else None
    if state is None:
        state = {"phase": "sparse", "fingerprint": fingerprint(model),
                 "base": {"run": str(base_run), "params": count_params(model),
                          "macs": count_macs(model, shape), "depth": depth(model),
                          **_accuracy(model, val, test)}}
        atomic_write_json(state_path, state)
    elif state["fingerprint"] != fingerprint(model):
        raise RuntimeError(f"{base_run} changed since {out} was started")
    stages = out / "stages"
    if state["phase"] == "sparse":
        where = stages / "sparse"
        history: list = []
        if s_epochs:
            pruner = make_pruner(method, model, shape, 0.5, reg)
            model, history = _fit(model, train, val, config(s_epochs, sparse_lr), where,
                                  [Regularize(pruner)], distill)
        resprune.save(model, where)
        sparse = resprune.load(where)
        state.update(phase="prune", sparse_history=history,
                     after_sparse=_accuracy(sparse, val, test))
        atomic_write_json(state_path, state)
    if state["phase"] == "prune":
        t0 = time.perf_counter()
        sparse = resprune.load(stages / "sparse")
        ratio, pruned = match_ratio(method, sparse, shape, params_reduction, metric)
        resprune.save(pruned, stages / "pruned")
        pruned = resprune.load(stages / "pruned")
        state.update(phase="finetune", pruning_ratio=ratio,
                     prune_seconds=round(time.perf_counter() - t0, 2),
                     widths={n: [b, a] for (n, b), a in zip(_widths(sparse).items(),
                                                             _widths(pruned).values())},
                     before_finetune=_accuracy(pruned, val, test))
        atomic_write_json(state_path, state)
    if state["phase"] == "finetune":
        model, history = _fit(resprune.load(stages / "pruned"), train, val,
                              config(f_epochs, finetune_lr), stages / "finetune",
                              distill=distill)
        resprune.save(model, out)
        state.update(phase="done", finetune_history=history)
        atomic_write_json(state_path, state)
        for name in ("sparse", "finetune"):
            (stages / name / TRAIN_STATE_FILE).unlink(missing_ok=True)

    model = resprune.load(out)  # on the CPU: counts and the CPU latency column
    base = state["base"]
    params, macs = count_params(model), count_macs(model, shape)
    lat = latency(model, shape, batch_sizes=(1, 64), warmup=2, repeats=5)
    hist = [{**r, "stage": st} for st in ("sparse", "finetune")
            for r in state.get(f"{st}_history") or []]
    for i, r in enumerate(hist):
        r["stage_epoch"], r["epoch"] = r["epoch"], i + 1
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in hist))
    summary = {
        "kind": "torch_pruning", "method": method, "model": base_summary.get("model"),
        "resprune": resprune.__version__, "torch_pruning": tp.__version__,
        "input_shape": list(shape), "data": base_summary["data"],
        "params": params, "macs": macs, "depth": depth(model),
        "cpu_latency_ms": {str(k): round(v["median_ms"], 4) for k, v in lat.items()},
        **_accuracy(model, val, test),
        "base": base,
        "params_removed_pct": pct_removed(base["params"], params),
        "macs_removed_pct": pct_removed(base["macs"], macs),
        "top1_after_sparse": state["after_sparse"]["top1"],
        "val_top1_after_sparse": state["after_sparse"]["val_top1"],
        "top1_before_finetune": state["before_finetune"]["top1"],
        "val_top1_before_finetune": state["before_finetune"]["val_top1"],
        "widths": state["widths"], "pruning_ratio": state["pruning_ratio"],
        "epochs": len(hist),
        "epochs_detail": {"sparse": len(state.get("sparse_history") or []),
                          "finetune": len(state.get("finetune_history") or [])},
        "seconds": round(sum(r.get("seconds") or 0.0 for r in hist)
                         + state.get("prune_seconds", 0.0), 2),
        "wall_seconds_last_call": round(time.time() - started, 2),
        "config": {"base_run": str(base_run), "method": method,
                   "params_reduction": params_reduction, "metric": metric,
                   "epoch_size": epoch_size, "distill_alpha": distill_alpha,
                   "distill_temperature": distill_temperature, "sparse_epochs": s_epochs,
                   "finetune_epochs": f_epochs, "sparse_lr": sparse_lr,
                   "finetune_lr": finetune_lr, "reg": reg, "batch_size": batch_size,
                   "channels_last": channels_last, "seed": seed, "device": device,
                   "importance": "GroupMagnitudeImportance(p=2)", "global_pruning": True},
    }
    write_summary(out, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base_run")
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--params-reduction", type=float, required=True,
                   help="fraction of params (or of MACs with --metric macs) to remove")
    p.add_argument("--metric", choices=("params", "macs"), default="params")
    p.add_argument("--epoch-size", type=int, default=None)
    p.add_argument("--distill-alpha", type=float, default=0.0,
                   help="> 0: distil from the base model (as --distill-from input)")
    p.add_argument("--distill-temperature", type=float, default=4.0)
    p.add_argument("--sparse-epochs", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--sparse-lr", type=float, default=0.01)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--reg", type=float, default=5e-4, help="GroupNormPruner reg (5e-4)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="where training and evaluation run (cpu)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    s = run(a.base_run, a.out, a.method, a.params_reduction, a.sparse_epochs,
            a.finetune_epochs, a.sparse_lr, a.finetune_lr, a.reg, a.batch_size,
            a.channels_last, a.metric, a.epoch_size, a.distill_alpha, a.distill_temperature,
            a.device)
    print(json.dumps({k: s[k] for k in ("method", "params_removed_pct", "macs_removed_pct",
                                        "top1_before_finetune", "top1", "pruning_ratio")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
