"""Training throughput of resprune's Trainer against a bare PyTorch loop.

Both train the same architecture from the same initial weights on the same in-memory batches
(already on the device), with the same SGD settings, precision and memory format. The bare
loop is the minimum: forward, cross-entropy, zero_grad, backward, step; no metrics, no loss
read-back, no schedule. The Trainer runs its full loop (per-step learning rate, running
loss/accuracy sums, NaN guard, callbacks, timing) with no validation set and no run directory,
so checkpoint writing is not part of the measurement.

Machines are noisy (shared CPUs, clock changes), so measurements are interleaved within one
process: rounds alternate A B / B A after an untimed warm-up of each, and the result is total
images over total seconds per side. Target: trainer / bare >= 0.95.

    .venv/bin/python benchmarks/train_throughput.py --steps 4 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time

import torch
import torch.nn.functional as F

from resprune import create
from resprune.measure._device import autocast, resolve_device, synchronize
from resprune.train import TrainConfig, Trainer


class Batches:
    """Precomputed batches with the loader interface the Trainer expects."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]):
        self.batches = batches
        self.batch_size = int(batches[0][0].shape[0])
        self.num_samples = sum(int(y.shape[0]) for _, y in batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass


def bare_epoch(model, optimizer, batches, device, precision, channels_last) -> None:
    model.train()
    for x, y in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=4, help="training steps per timed measurement")
    p.add_argument("--rounds", type=int, default=3, help="timed A/B rounds (after warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each side first")
    p.add_argument("--progress", action="store_true", help="show the Trainer's progress bar")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model_bare = create(args.model, num_classes=args.num_classes).to(device)
    model_trainer = copy.deepcopy(model_bare)
    g = torch.Generator().manual_seed(1)
    n = max(args.steps, args.warmup)
    batches = [(torch.randn(args.batch_size, 3, args.image_size, args.image_size,
                            generator=g).to(device),
                torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device))
               for _ in range(n)]
    timed, warm = Batches(batches[:args.steps]), Batches(batches[:args.warmup])

    cfg = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine",
               precision=args.precision, channels_last=args.channels_last,
               device=str(device.type), batch_size=args.batch_size)
    if args.channels_last:
        model_bare = model_bare.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model_bare.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    trainer = Trainer(model_trainer, timed, None, TrainConfig(epochs=1, **cfg),
                      progress=args.progress)
    warm_trainer = Trainer(model_trainer, warm, None, TrainConfig(epochs=1, **cfg),
                           progress=False)

    def run_bare() -> float:
        t0 = time.perf_counter()
        bare_epoch(model_bare, opt, timed, device, args.precision, args.channels_last)
        return time.perf_counter() - t0

    def run_trainer() -> float:
        t0 = time.perf_counter()
        trainer.fit()
        synchronize(device)
        return time.perf_counter() - t0

    if args.warmup:
        bare_epoch(model_bare, opt, warm, device, args.precision, args.channels_last)
        warm_trainer.fit()

    images = args.steps * args.batch_size
    rows, totals = [], {"bare": 0.0, "trainer": 0.0}
    for r in range(args.rounds):
        order = [("bare", run_bare), ("trainer", run_trainer)]
        if r % 2:
            order.reverse()
        secs = {}
        for name, fn in order:
            secs[name] = fn()
            totals[name] += secs[name]
        rows.append((r + 1, "/".join(n for n, _ in order), images / secs["bare"],
                     images / secs["trainer"]))

    bare_ips = images * args.rounds / totals["bare"]
    trainer_ips = images * args.rounds / totals["trainer"]
    ratio = trainer_ips / bare_ips
    print(f"command: {' '.join([sys.executable.split('/')[-1]] + sys.argv)}")
    print(f"torch {torch.__version__}, {platform.machine()}, device {device}, "
          f"threads {torch.get_num_threads()}, model {args.model}, batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size}, precision {args.precision}, "
          f"channels_last {args.channels_last}, {args.steps} steps x {args.rounds} rounds "
          f"(+{args.warmup} warm-up steps each)")
    print()
    print("| round | order | bare images/s | trainer images/s | ratio |")
    print("|---|---|---|---|---|")
    for r, order, b, t in rows:
        print(f"| {r} | {order} | {b:.1f} | {t:.1f} | {t / b:.3f} |")
    print(f"| all | | {bare_ips:.1f} | {trainer_ips:.1f} | {ratio:.3f} |")
    print()
    verdict = "meets" if ratio >= 0.95 else "MISSES"
    print(f"trainer / bare = {ratio:.3f} ({verdict} the >= 0.95 target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
