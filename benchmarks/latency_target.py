"""Latency targets: the table's prediction against the measured model (issue #12, item 3).

From a converged base run B, for each target reduction R (no training: latency depends on the
architecture only):

- **table**: ``vacl.prune(target_latency_reduction=R, latency_check="table")``: groups go
  until the per-layer table *predicts* R less time;
- **measured**: the same with ``latency_check="measured"``: the table goal is corrected until
  the pruned copy, timed against B, *measures* R less time (``resprune.vacl.latency_fit``).

Both rank with ``--cost latency`` and the Taylor score (the recommended recipe) by default.
Afterwards B and every pruned model are timed again, interleaved in one process with more
repeats: the independent check of what each check delivered.

    .venv/bin/python benchmarks/latency_target.py /work/runs/r56-B --targets 0.3 0.5
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, md_table  # noqa: E402
from latency_aware import _taylor  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--runtime", default="onnxruntime", choices=["eager", "onnxruntime"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--score", choices=["layer_rms", "taylor"], default="taylor")
    ap.add_argument("--cost", choices=["none", "latency"], default="latency")
    ap.add_argument("--seed", type=int, default=0, help="seed of the Taylor score's batches")
    ap.add_argument("--repeats", type=int, default=15, help="rounds of the final timing")
    ap.add_argument("--out", type=Path, default=RESULTS / "latency_target.md")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    import resprune
    from resprune.measure.compare import time_models
    from resprune.measure.latency_table import measure_table
    from resprune.vacl import discover_groups, prune

    base = resprune.load(a.base).eval()
    shape = tuple(resprune.runs.input_shape_of(a.base, resprune.spec_of(base)))
    table = measure_table(base, shape, a.runtime, batch=a.batch)
    scores = _taylor(base, shape, a.seed, 10000) if a.score == "taylor" else None
    models, reports = {}, {}
    for r in a.targets:
        for check in ("table", "measured"):
            m = copy.deepcopy(base)
            reports[(r, check)] = prune(m, shape, target_latency_reduction=r,
                                        latency_table=table, cost=a.cost, score=a.score,
                                        scores=scores, groups=discover_groups(m, shape),
                                        latency_check=check)
            models[f"{check} {r:g}"] = m.eval()
            print(f"R={r:g} {check}: {json.dumps(reports[(r, check)]['latency'])[:400]}",
                  flush=True)
    deployed = {"B": resprune.deploy(base, shape),
                **{k: resprune.deploy(m, shape) for k, m in models.items()}}
    rows, _ = time_models(deployed, shape, batch_sizes=(a.batch,), runtimes=(a.runtime,),
                          devices=["cpu"], warmup=2, repeats=a.repeats)
    ms = rows[0]["ms"]
    body = []
    for r in a.targets:
        for check in ("table", "measured"):
            rep = reports[(r, check)]
            lat = rep["latency"]
            k = f"{check} {r:g}"
            fit = (f"{100 * lat['measured_reduction']:.1f} % in {len(lat['rounds'])} rounds"
                   if check == "measured" else "-")
            goal = lat.get("goal", r)
            body.append([f"{100 * r:.0f} %", check, f"{100 * goal:.1f} %",
                         f"{100 * lat['predicted_reduction']:.1f} %", fit,
                         f"{ms[k]:.1f}", f"**{100 * (1 - ms[k] / ms['B']):.1f} %**",
                         f"{100 * rep['macs_reduction']:.1f} %",
                         f"{100 * rep['params_reduction']:.1f} %",
                         "yes" if rep["target_reached"] else "no"])
    head = ["target", "check", "table goal", "predicted reduction", "measured by the fit",
            f"{a.runtime} b{a.batch} ms", "measured reduction (final timing)",
            "MACs removed", "params removed", "reached (by its check)"]
    fits = []
    for r in a.targets:
        lat = reports[(r, "measured")]["latency"]
        steps = ", ".join(f"{100 * x['goal']:.1f} % -> {100 * x['measured_reduction']:.1f} %"
                          for x in lat["rounds"])
        fits.append(f"- target {100 * r:.0f} %: table goal -> measured reduction: {steps}")
    cmd = "python benchmarks/latency_target.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    text = "\n".join([
        "# Latency targets: the table's prediction against the measured model\n",
        f"Command: `{cmd}`  ",
        f"Machine: {machine_info(1, ['onnxruntime'])}.\n",
        f"B: `{a.base.name}` ({ms['B']:.1f} ms per batch of {a.batch} in {a.runtime}, one "
        f"thread). Every row prunes a copy of B without training, ranked by "
        f"`group_score={a.score}`, `cost={a.cost}` against the {a.runtime} table at batch "
        f"{a.batch}; *check* is `latency_check`. The last timing runs B and every pruned "
        f"model interleaved in one process ({a.repeats} rounds, median, deployment form).\n",
        md_table(head, body),
        "The fits' rounds:\n",
        *fits, "",
    ])
    a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
