"""Small-image folders: first decode, cached start, and training throughput vs CIFAR pickles.

Three measurements, written to ``benchmarks/results/imagefolder_decode.md``:

1. **First decode** of ``cifar10-jpeg`` (50,000 train + 5,000 test JPEGs) into a fresh, empty
   cache directory: ``load_dataset`` (folder scan) plus decoding both folders with all cores.
   Target: at most 60 s on 2 cores.
2. **Cached start**: the same in a new process-equivalent (new bundle, same cache). Target: at
   most 5 s.
3. **Training throughput** of one model on the in-memory JPEG set against the cifar10 pickle
   path (``--data cifar10`` on cifar10-mini), same batch size and model, timed in interleaved
   rounds within this process. Target: ratio at least 0.95.

    .venv/bin/python benchmarks/imagefolder_decode.py [--model resnet20] [--steps 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, machine_info, md_table  # noqa: E402

from resprune import create  # noqa: E402
from resprune.data import load_dataset, make_loader  # noqa: E402

JPEG = REPO.parent / "shared" / "datasets" / "cifar10-jpeg"
MINI = REPO.parent / "shared" / "datasets" / "cifar10-mini"


def timed_load(cache: Path) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    b = load_dataset("imagefolder", JPEG, cache_dir=cache, progress=False)
    scan = time.perf_counter() - t0
    b.train.materialize()
    b.val.materialize()
    b.test.materialize()
    return scan, time.perf_counter() - t0, b


def steps_per_s(model, loader, steps: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    t0, n = time.perf_counter(), 0
    for i, (x, y) in enumerate(loader):
        if i >= steps:
            break
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += int(y.shape[0])
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--steps", type=int, default=20, help="training steps per round (20)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default=str(RESULTS / "imagefolder_decode.md"))
    a = p.parse_args(argv)
    cache = Path(tempfile.mkdtemp(prefix="resprune-cache-"))
    try:
        scan1, first, _ = timed_load(cache)
        scan2, cached, jpeg = timed_load(cache)
    finally:
        pass
    cifar = load_dataset("cifar10", MINI)
    loaders = {"imagefolder (cifar10-jpeg, in memory)":
               make_loader(jpeg, "train", a.batch_size, train=True, seed=0),
               "cifar10 pickles (cifar10-mini)":
               make_loader(cifar, "train", a.batch_size, train=True, seed=0)}
    torch.manual_seed(0)
    base = create(a.model, num_classes=10)
    models = {k: create(a.model, num_classes=10) for k in loaders}
    for m in models.values():
        m.load_state_dict(base.state_dict())
    rates: dict[str, list[float]] = {k: [] for k in loaders}
    names = list(loaders)
    for k in names:  # warm-up
        steps_per_s(models[k], loaders[k], 3)
    for r in range(a.rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            rates[k].append(steps_per_s(models[k], loaders[k], a.steps))
    shutil.rmtree(cache, ignore_errors=True)
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    ratio = mean[names[0]] / mean[names[1]]
    cmd = "benchmarks/imagefolder_decode.py " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])
    text = [
        "# Small-image folders: decode, cache, throughput\n",
        f"Command: `.venv/bin/python {cmd.strip()}`\n",
        f"Machine: {machine_info(1)}; torch threads {torch.get_num_threads()}.\n",
        md_table(["measurement", "result", "target"], [
            ["first decode of cifar10-jpeg (55,000 JPEGs), scan + decode", f"{first:.1f} s "
             f"(scan {scan1:.1f} s)", "<= 60 s"],
            ["start from the cache", f"{cached:.1f} s (scan {scan2:.1f} s)", "<= 5 s"],
            [f"training {a.model}, batch {a.batch_size}: in-memory JPEG / cifar10 pickle path",
             f"{ratio:.3f} ({mean[names[0]]:.1f} vs {mean[names[1]]:.1f} images/s; "
             f"{a.rounds} interleaved rounds of {a.steps} steps)", ">= 0.95"],
        ]),
        "Both training paths use the same in-memory loader (uint8 images on the device, "
        "batched pad-crop-flip augmentation); the ratio checks that nothing in the image-folder "
        "path (decoding, caching) leaks into the training loop.\n",
    ]
    Path(a.out).write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
