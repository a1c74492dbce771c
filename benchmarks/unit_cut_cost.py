"""What erasing residual units of a trained run costs before any retraining (issue #10).

For each set of units: validation top-1 of the run with them cut (``nn.Identity``), and the
same after recalibrating the BatchNorm statistics on ``--recal-batches`` training batches
(forward passes only, no weight changes; EagleEye's adaptive BN). This is what
``resprune implode --retrain needed`` checks before it decides to retrain. Decisions use the
validation split carved from ``train/`` (the run's ``--val-fraction 0.1 --seed 0``).

    .venv/bin/python benchmarks/unit_cut_cost.py /work/runs/r56-B \\
        --units layer2.8 --units layer2.8,layer2.6 --units layer2.8,layer2.6,layer2.1,layer2.4
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, machine_info, md_table  # noqa: E402

DATA = REPO.parent / "shared" / "datasets" / "cifar10-jpeg"


def recalibrated(model, loader, batches: int):
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated on ``batches``
    training batches (cumulative average), weights unchanged."""
    from resprune.data.loader import seeded_batches

    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad(), seeded_batches(loader, batches, 0) as first:
        for x, _ in first:
            m(x)
    return m.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--units", action="append", required=True,
                    help="comma-separated unit names, cut together (repeatable)")
    ap.add_argument("--recal-batches", type=int, default=40)
    ap.add_argument("--out", type=Path, default=RESULTS / "unit_cut_cost.md")
    a = ap.parse_args(argv)
    import resprune
    from resprune.data import load_dataset, make_loader
    from resprune.implosion.erase import erase_units
    from resprune.measure import evaluate

    base = resprune.load(a.run).eval()
    bundle = load_dataset("imagefolder", DATA, val_fraction=0.1, seed=0,
                          preprocess=base.preprocess, progress=False)
    val = make_loader(bundle, "val", 500, train=False)
    train = make_loader(bundle, "train", 128, train=True, seed=0)
    top1 = lambda m: 100 * evaluate(m, val)["top1"]  # noqa: E731
    body = []
    for units in ["", *a.units]:
        names = [n for n in units.split(",") if n]
        m = copy.deepcopy(base)
        erase_units(m, names)
        body.append([", ".join(names) or "(none)", f"{top1(m):.2f}",
                     f"{top1(recalibrated(m, train, a.recal_batches)):.2f}"])
    cmd = " ".join(["python benchmarks/unit_cut_cost.py", str(a.run),
                    *[f"--units {u}" for u in a.units], f"--recal-batches {a.recal_batches}"])
    text = "\n".join([
        "# Erasing residual units without retraining: validation top-1\n",
        f"Command: `{cmd}`  ",
        f"Machine: {machine_info(1)}.\n",
        md_table(["units cut", "val top-1 %", f"after BN recalibration ({a.recal_batches} "
                  "training batches) %"], body), ""])
    a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
