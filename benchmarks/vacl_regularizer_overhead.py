"""Overhead of the VACL regularizer on one training step (fp32, CPU or CUDA), and of
torch-pruning's GroupNormPruner regularizer beside it.

A training step is forward, cross-entropy, zero_grad, backward, SGD step on one fixed batch
(already on the device). The "with" side calls ``reg.add_grad_(model)`` between backward and
the optimizer step, as the Trainer does for a Regularizer among its ``loss_terms`` (since
session 28); ``--loss-term`` adds a side that backpropagates ``reg(model)`` added to the loss
instead (the Trainer's way before: the same update, several ops per parameter tensor). With
``--torch-pruning`` another side calls
``GroupNormPruner.regularize(model)`` between backward and the optimizer step, as
``benchmarks/_tp_baselines.py`` (the torch-pruning rows) does, built the same way
(``make_pruner``). All sides train the same model (the weights' values do not change the
cost), and are interleaved within one process: the order of the sides rotates every round,
after an untimed warm-up of each. Shared machines make single rounds noisy, so the verdict
uses the median of the per-round ratios; the ratio of totals and the cost of the term alone
(VACL: its forward + backward; torch-pruning: one ``regularize`` call) are printed beside it.
On CUDA every timing ends with ``torch.cuda.synchronize()``, and the host-device
synchronisations of one call of each term are counted with ``torch.cuda.set_sync_debug_mode``
(each one a wait for the GPU's queue: cheap on an idle GPU, a time slice of every other
process on a shared one). The ops each term dispatches per call are counted on every device
(torch.profiler, top-level aten ops, views included): where a step is launch-bound, as a
ResNet-56 step at batch 128 is on an H200, each costs the host several microseconds whatever
its size. Target: VACL with / without <= 1.05.

    .venv/bin/python benchmarks/vacl_regularizer_overhead.py --rounds 12 --steps 1
    .venv/bin/python benchmarks/vacl_regularizer_overhead.py --loss-term --torch-pruning \
        --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from _tp_baselines import make_pruner

from resprune import create
from resprune.errors import UserError
from resprune.measure._device import resolve_device, synchronize
from resprune.vacl import FORMS, Regularizer


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def step(model, optimizer, x, y, reg=None, loss_term=None, pruner=None) -> None:
    loss = F.cross_entropy(model(x), y)
    if loss_term is not None:
        loss = loss + loss_term(model)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if reg is not None:
        reg.add_grad_(model)
    if pruner is not None:
        pruner.regularize(model)
    optimizer.step()


def dispatched_ops(fn) -> int:
    """Top-level aten ops one call of ``fn`` dispatches (views included), by torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.name.startswith("aten::") and (
        e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
        for e in prof.events())


def syncs(fn, device: torch.device) -> int | None:
    """Host-device synchronisations in one call of ``fn`` (CUDA only; None elsewhere)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--shortcut", default="A", choices=["A", "B"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=12, help="A/B rounds (alternating order)")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per side and round")
    ap.add_argument("--form", default="moments", choices=FORMS)
    ap.add_argument("--include-consumers", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--loss-term", action="store_true",
                    help="a side backpropagating reg(model) added to the loss")
    ap.add_argument("--torch-pruning", action="store_true",
                    help="a third side: torch-pruning's GroupNormPruner.regularize")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load0 = _load()

    try:
        device = resolve_device(args.device)
    except UserError:
        ap.error("--device cuda: no CUDA device here")

    def sync() -> None:
        synchronize(device)

    model = create(args.model, num_classes=10, shortcut=args.shortcut).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    t0 = time.perf_counter()
    reg = Regularizer(model, form=args.form, lam=1e-4,
                      include_consumers=args.include_consumers)
    build_s = time.perf_counter() - t0
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    sides: dict[str, dict] = {"without": {}, "with": {"reg": reg}}
    terms = {"with": lambda: reg.add_grad_(model)}
    if args.loss_term:
        sides["loss-term"] = {"loss_term": reg}
        terms["loss-term"] = lambda: reg(model).backward()
    pruner = None
    if args.torch_pruning:
        t0 = time.perf_counter()
        pruner = make_pruner("groupnorm", model, (3, 32, 32), 0.5, 5e-4)
        tp_build_s = time.perf_counter() - t0
        sides["torch-pruning"] = {"pruner": pruner}
        terms["torch-pruning"] = lambda: pruner.regularize(model)
    for kw in sides.values():  # untimed warm-up of each side
        step(model, optimizer, x, y, **kw)
    for term in terms.values():
        for _ in range(3):
            term()
    sync()
    names = list(sides)
    total = {k: 0.0 for k in sides}
    per_round = {k: [] for k in names if k != "without"}
    term_s = {k: [] for k in terms}
    for rnd in range(args.rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        times = {}
        for side in order:
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(model, optimizer, x, y, **sides[side])
            sync()
            times[side] = time.perf_counter() - t0
            total[side] += times[side]
        for k in per_round:
            per_round[k].append(times[k] / times["without"])
        for k, term in terms.items():  # each term alone
            sync()
            t0 = time.perf_counter()
            for _ in range(3):
                term()
            sync()
            term_s[k].append((time.perf_counter() - t0) / 3)
    counted = {k: syncs(term, device) for k, term in terms.items()}
    ops = {k: dispatched_ops(term) for k, term in terms.items()}
    optimizer.zero_grad(set_to_none=True)

    n = args.rounds * args.steps
    step_ms = total["without"] / n * 1e3
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, threads {torch.get_num_threads()}")
    print(f"# Regularizer overhead: {args.model} (shortcut {args.shortcut}), batch "
          f"{args.batch_size}, fp32, {where}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"{platform.machine()}, threads {torch.get_num_threads()}, "
          f"load average before/after {load0} / {_load()}")
    print(f"regularizer: {reg!r}")
    print(f"members {reg.layout.num_members}, parameter buckets {len(reg.layout.buckets)}, "
          f"built in {build_s:.2f} s")
    if pruner is not None:
        from importlib.metadata import version

        print(f"torch-pruning {version('torch-pruning')}: GroupNormPruner(reg=5e-4), "
              f"{len(pruner._groups)} dependency groups, built in {tp_build_s:.2f} s")
    print(f"step without: {step_ms:.1f} ms/step ({n} steps)")
    for k in per_round:
        label = {"with": "VACL", "loss-term": "VACL as a loss term"}.get(k, k)
        median = statistics.median(per_round[k])
        term_ms = statistics.median(term_s[k]) * 1e3
        print(f"step with {label}: {total[k] / n * 1e3:.1f} ms/step ({n} steps)")
        print("  per-round ratio with/without: " + " ".join(f"{r:.3f}" for r in per_round[k]))
        print(f"  ratio of totals: {total[k] / total['without']:.4f}; median per-round ratio: "
              f"{median:.4f}")
        print(f"  term alone (median of rounds): {term_ms:.1f} ms = "
              f"{100 * term_ms / step_ms:.2f} % of a step without it; ops dispatched per "
              f"call: {ops[k]}; host-device syncs per call: "
              f"{'n/a (CPU)' if counted[k] is None else counted[k]}")
    median = statistics.median(per_round["with"])
    verdict = "meets" if median <= 1.05 else "MISSES"
    print(f"VACL overhead (median per-round): {100 * (median - 1):+.2f} %; {verdict} the "
          "<= 5 % target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
