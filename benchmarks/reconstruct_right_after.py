"""Val top-1 right after a removal: stale statistics, BatchNorm re-estimated, or re-fitted.

For a trained run B and removals of it, the removed net is scored on the validation split
carved from ``train/`` (``--val-fraction 0.1 --seed 0``, as every cifar10-jpeg row) with no
training, three ways: as cut (the running statistics learnt before the removal), after
:func:`resprune.measure.recalibrate_batchnorm` on ``--recalibrate`` training images, and
after :func:`resprune.train.reconstruct` on each ``--samples`` count of training images
(``--reconstruct N``, least squares layer by layer to B's outputs). Removals:

- ``--units A,B,...``: an implosion cut of those residual units (row 1l / 3n's 12 units);
- ``--pruned DIR``: a VACL run's ``stages/pruned`` (its ``prune_report.json`` maps the kept
  channels), re-built from B by the report's ``removed_groups`` when the stage was re-fitted
  already (so every column starts from the same raw removal).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reconstruct_right_after.py /work/runs/r56-B \\
        --units layer1.5,layer2.1,... --pruned /work/runs/r56-vacl-r20size-450k/stages/pruned \\
        --samples 512 1024
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, machine_info, md_table  # noqa: E402

DATA = REPO.parent / "shared" / "datasets" / "cifar10-jpeg"


def removals(base: nn.Module, units: list[str], pruned: list[Path], shape
             ) -> list[tuple[str, nn.Module, dict[str, list[int]]]]:
    """``(label, removed copy of base, kept output channels)`` of every removal asked."""
    from resprune import vacl
    from resprune.implosion.erase import erase_units

    out = []
    if units:
        cut = copy.deepcopy(base)
        erase_units(cut, units)
        out.append((f"implosion cut of {len(units)} units ({', '.join(units)})", cut, {}))
    for stage in pruned:
        report = json.loads((stage / "prune_report.json").read_text())
        groups = vacl.discover_groups(base, shape)
        chosen = [g for g in groups if g.name in set(report["removed_groups"])]
        model = copy.deepcopy(base)
        vacl.remove_members(model, [m for g in chosen for m in g.members])
        out.append((f"VACL removal of {stage} ({len(chosen)} groups, "
                    f"{100 * report['params_reduction']:.1f} % of params)", model,
                    report["kept_out_channels"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--units", default="", help="comma-separated residual units to cut")
    ap.add_argument("--pruned", type=Path, nargs="*", default=[],
                    help="VACL stages/pruned directories (with prune_report.json)")
    ap.add_argument("--samples", type=int, nargs="+", default=[1024])
    ap.add_argument("--recalibrate", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0, help="seed the training images are read "
                    "under")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "reconstruct_right_after.md")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    import resprune
    from resprune.data import load_dataset, make_loader
    from resprune.measure import count_params, evaluate, recalibrate_batchnorm
    from resprune.train import reconstruct

    base = resprune.load(a.run).eval()
    bundle = load_dataset("imagefolder", a.data_dir, val_fraction=0.1, seed=0,
                          preprocess=base.preprocess, progress=False)
    train = make_loader(bundle, "train", 128, train=True, seed=0)
    val = make_loader(bundle, "val", 256, train=False)
    shape = tuple(next(iter(val))[0].shape[1:])
    units = [u for u in a.units.split(",") if u]
    body = [["B (nothing removed)", "-", f"{100 * evaluate(base, val)['top1']:.2f}", "", ""]]
    p0 = count_params(base)
    for label, removed, kept in removals(base, units, a.pruned, shape):
        stale = evaluate(removed, val)["top1"]
        recal = copy.deepcopy(removed)
        recalibrate_batchnorm(recal, train, a.recalibrate, a.seed)
        row = [label, f"{100 * (1 - count_params(removed) / p0):.1f}", f"{100 * stale:.2f}",
               f"{100 * evaluate(recal, val)['top1']:.2f}"]
        fits = []
        for n in a.samples:
            fitted = copy.deepcopy(removed)
            t0 = time.perf_counter()
            got = reconstruct(base, fitted, train, n, kept, seed=a.seed)
            wall = time.perf_counter() - t0
            done = [r for r in got["layers"] if r["error_before"] > 0]
            fits.append(f"{n}: {100 * evaluate(fitted, val)['top1']:.2f} % "
                        f"({len(done)} layers, error "
                        f"{sum(r['error_before'] for r in done) / len(done):.3f} -> "
                        f"{sum(r['error_after'] for r in done) / len(done):.3f}, "
                        f"{wall:.0f} s)")
            print(label, fits[-1], flush=True)
        body.append([*row, "; ".join(fits)])
    cmd = " ".join(["python benchmarks/reconstruct_right_after.py", str(a.run),
                    *(["--units", a.units] if units else []),
                    *(["--pruned", *map(str, a.pruned)] if a.pruned else []),
                    "--samples", *map(str, a.samples), "--recalibrate", str(a.recalibrate),
                    "--seed", str(a.seed), "--threads", str(a.threads)])
    text = "\n".join([
        "# Val top-1 right after a removal: as cut, BatchNorm re-estimated, re-fitted\n",
        f"Command: `{cmd}`  ",
        f"Machine: {machine_info(1)}.\n",
        "No training. Val top-1 on the 5,000-image validation split carved from `train/`; "
        f"BatchNorm re-estimated on {a.recalibrate} training images; re-fitted: "
        "`resprune.train.reconstruct` (`--reconstruct N`) on N training images (epoch 0 of "
        "the training loader, read under the seed), ridge 1e-3; the layers' mean relative "
        "output error before and after the fits, and the fit's wall time (one thread; "
        "timings from a machine running other work are not comparable).\n",
        md_table(["removal", "params removed %", "as cut %", "BatchNorm re-estimated %",
                  "re-fitted on N images: val top-1"], body), ""])
    a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
