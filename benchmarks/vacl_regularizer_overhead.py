"""Overhead of the VACL regularizer on one training step (CPU, fp32).

A training step is forward, cross-entropy, zero_grad, backward, SGD step on one fixed batch
(already in memory). The "with" side adds ``reg(model)`` to the loss, exactly as the Trainer's
``loss_terms`` do. Both sides train the same model (the weights' values do not change the
cost), and are interleaved within one process: rounds alternate A B / B A after an untimed
warm-up of each. Shared CPUs make single rounds noisy, so the verdict uses the median of the
per-round ratios; the ratio of totals and the cost of the term alone (its forward + backward,
timed inside every round) are printed beside it. Target: with / without <= 1.05.

    .venv/bin/python benchmarks/vacl_regularizer_overhead.py --rounds 12 --steps 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from resprune import create
from resprune.vacl import FORMS, Regularizer


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def step(model, optimizer, x, y, reg) -> None:
    loss = F.cross_entropy(model(x), y)
    if reg is not None:
        loss = loss + reg(model)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


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
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load0 = _load()

    model = create(args.model, num_classes=10, shortcut=args.shortcut).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    t0 = time.perf_counter()
    reg = Regularizer(model, form=args.form, lam=1e-4,
                      include_consumers=args.include_consumers)
    build_s = time.perf_counter() - t0
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))

    sides = {"without": None, "with": reg}
    for r in sides.values():  # untimed warm-up of each side
        step(model, optimizer, x, y, r)
    for _ in range(3):
        reg(model).backward()
    total = {k: 0.0 for k in sides}
    per_round, term_s = [], []
    for rnd in range(args.rounds):
        order = ["without", "with"] if rnd % 2 == 0 else ["with", "without"]
        times = {}
        for side in order:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(model, optimizer, x, y, sides[side])
            times[side] = time.perf_counter() - t0
            total[side] += times[side]
        per_round.append(times["with"] / times["without"])
        t0 = time.perf_counter()  # the term alone: forward + backward of lam * R
        for _ in range(3):
            reg(model).backward()
        term_s.append((time.perf_counter() - t0) / 3)
    optimizer.zero_grad(set_to_none=True)

    n = args.rounds * args.steps
    ratio = total["with"] / total["without"]
    median = statistics.median(per_round)
    step_ms = total["without"] / n * 1e3
    term_ms = statistics.median(term_s) * 1e3
    print(f"# VACL regularizer overhead: {args.model} (shortcut {args.shortcut}), batch "
          f"{args.batch_size}, fp32, CPU")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"{platform.machine()}, threads {torch.get_num_threads()}, "
          f"load average before/after {load0} / {_load()}")
    print(f"regularizer: {reg!r}")
    print(f"members {reg.layout.num_members}, parameter buckets {len(reg.layout.buckets)}, "
          f"built in {build_s:.2f} s")
    print(f"step without: {step_ms:.1f} ms/step ({n} steps)")
    print(f"step with:    {total['with'] / n * 1e3:.1f} ms/step ({n} steps)")
    print("per-round ratio with/without: " + " ".join(f"{r:.3f}" for r in per_round))
    print(f"ratio of totals: {ratio:.4f}; median per-round ratio: {median:.4f}")
    print(f"term alone (forward + backward, median of rounds): {term_ms:.1f} ms "
          f"= {100 * term_ms / step_ms:.2f} % of a step without it")
    verdict = "meets" if median <= 1.05 else "MISSES"
    print(f"overhead (median per-round): {100 * (median - 1):+.2f} %; {verdict} the <= 5 % "
          "target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
