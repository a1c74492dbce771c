"""Latency-aware vs MACs-based VACL ranking at equal measured latency (issue #12, item 3).

From a converged base run B:

1. **plan** (no training): measure B's per-layer latency table on the target runtime (one
   thread); prune a copy of B with ``target_latency_reduction=L, cost="latency"`` (row
   *latency*); then find by bisection the ``target_macs_reduction`` whose plain (score-ranked)
   pruning of B runs as fast as the latency row, measured interleaved in the same runtime
   (row *MACs*). Both use exact widths, so only the ranking differs.
2. **run**: the two rows as ordinary ``resprune vacl`` runs from B with no sparsity training
   (the groups B's weights rank lowest go) and the same fine-tuning budget and distillation.
3. **report**: params, MACs, latency measured interleaved (eager and onnxruntime, batch 1 and
   64, one thread), test top-1 and its paired difference between the rows (± standard error)
   on cifar10-jpeg ``test/``.

    .venv/bin/python benchmarks/latency_aware.py /work/runs/r56-B --runs /work/runs/la \\
        --runtime onnxruntime --reduction 0.5 --finetune-epochs 2 --epoch-size 10000
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, correct, machine_info, md_table, run_command  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "cifar10-jpeg"


def _ms(models: dict, shape, runtime: str, batch: int, repeats: int) -> dict[str, float]:
    from resprune.measure.compare import time_models

    rows, _ = time_models(models, shape, batch_sizes=(batch,), runtimes=(runtime,),
                          devices=["cpu"], warmup=2, repeats=repeats)
    return rows[0]["ms"]


def _taylor(base, shape, seed: int, epoch_size: int):
    """The Taylor scores ``resprune vacl --group-score taylor --seed SEED`` computes on B:
    32 batches of 128 from epoch 0 of the same training loader."""
    from resprune.data import load_dataset, make_loader
    from resprune.vacl import discover_groups, group_scores

    bundle = load_dataset("imagefolder", DATA, val_fraction=0.1, seed=seed,
                          preprocess=base.preprocess)
    train = make_loader(bundle, "train", 128, train=True, seed=seed, epoch_size=epoch_size)
    return group_scores(base, discover_groups(base, shape), score="taylor", loader=train,
                        batches=32, seed=seed)


def plan(base_dir: Path, runtime: str, batch: int, reduction: float, repeats: int,
         cap: float | None = None, score: str = "layer_rms", seed: int = 0,
         epoch_size: int = 10000, macs_score: str = "layer_rms",
         round_to: int | str | None = None, macs_round_to: int | None = None) -> dict:
    import resprune
    from resprune.measure.latency_table import measure_table
    from resprune.vacl import prune

    base = resprune.load(base_dir).eval()
    shape = tuple(resprune.runs.input_shape_of(base_dir, resprune.spec_of(base)))
    table = measure_table(base, shape, runtime, batch=batch)
    aware = copy.deepcopy(base)
    taylor = (_taylor(base, shape, seed, epoch_size)
              if "taylor" in (score, macs_score) else None)
    scores = taylor if score == "taylor" else None
    r_aware = prune(aware, shape, target_latency_reduction=reduction, latency_table=table,
                    cost="latency", max_layer_reduction=cap, score=score, scores=scores,
                    round_to=round_to or 1)  # None: exact widths, as in the plans before auto

    def macs_model(t: float):
        m = copy.deepcopy(base)
        prune(m, shape, target_macs_reduction=t, max_layer_reduction=cap, score=macs_score,
              scores=taylor if macs_score == "taylor" else None, round_to=macs_round_to)
        return m.eval()

    lo, hi, tried = 0.0, 0.98, []
    goal = _ms({"aware": aware}, shape, runtime, batch, repeats)["aware"]
    best = None
    for _ in range(8):
        mid = (lo + hi) / 2
        ms = _ms({"aware": aware, "macs": macs_model(mid)}, shape, runtime, batch, repeats)
        ratio = ms["macs"] / ms["aware"]
        tried.append({"target_macs_reduction": round(mid, 4), "ms": ms, "ratio": ratio})
        if best is None or abs(ratio - 1) < abs(best[1] - 1):
            best = (mid, ratio)
        if ratio > 1:
            lo = mid
        else:
            hi = mid
    return {"runtime": runtime, "batch": batch, "reduction": reduction,
            "aware_ms_alone": goal, "aware_prune": {k: r_aware[k] for k in (
                "params_reduction", "macs_reduction", "latency")},
            "macs_target": round(best[0], 4), "bisection": tried, "cap": cap,
            "threads": torch.get_num_threads(), "score": score, "macs_score": macs_score,
            "round_to": round_to, "macs_round_to": macs_round_to,
            "round_to_resolved": r_aware["round_to"],
            "aware_removed_groups": r_aware["removed_groups"]}


def commands(base: Path, p: dict, epochs: int, epoch_size: int,
             seed: int = 0) -> dict[str, list[str]]:
    common = ["resprune", "vacl", str(base), "--sparse-epochs", "0", "--finetune-epochs",
              str(epochs), "--finetune-lr", "0.01", "--epoch-size", str(epoch_size),
              "--seed", str(seed),
              "--distill-from", "input", "--device", "cpu", "--no-progress",
              *([] if p.get("cap") is None else ["--max-layer-reduction", str(p["cap"])])]
    return {
        "latency": common + ["--target-latency-reduction", str(p["reduction"]), "--cost",
                             "latency", "--latency-runtime", p["runtime"], "--latency-batch",
                             str(p["batch"]), "--group-score", p.get("score", "layer_rms"),
                             "--round-to", str(p.get("round_to") or 1)],
        "macs": common + ["--target-macs-reduction", str(p["macs_target"]), "--group-score",
                          p.get("macs_score", "layer_rms"),
                          *([] if p.get("macs_round_to") is None
                            else ["--round-to", str(p["macs_round_to"])])],
    }


def report(base_dir: Path, runs: Path, p: dict, repeats: int) -> str:
    import resprune
    from resprune.data import load_dataset, make_loader

    names = {"B": base_dir, "latency": runs / "latency", "macs": runs / "macs"}
    models = {k: resprune.deploy(resprune.load(v)).eval() for k, v in names.items()}
    summaries = {k: json.loads((v / "summary.json").read_text()) for k, v in names.items()}
    shape = tuple(resprune.runs.input_shape_of(base_dir, resprune.spec_of(models["B"])))
    bundle = load_dataset("imagefolder", DATA, preprocess=models["B"].preprocess,
                          progress=False)
    test = make_loader(bundle, "test", 500, train=False)
    hits = {k: correct(m, test) for k, m in models.items()}
    ms = {(rt, bs): _ms(models, shape, rt, bs, repeats) for rt in ("eager", "onnxruntime")
          for bs in (1, 64)}
    body = []
    for k in ("B", "latency", "macs"):
        s = summaries[k]
        d = hits[k] - hits["macs"]
        se = float(d.std(unbiased=True)) / math.sqrt(d.numel())
        body.append([
            k, f"{s['params'] / 1e3:.1f} k", f"{s['macs'] / 1e6:.2f} M",
            *[f"{ms[(rt, bs)][k]:.2f}" for rt in ("eager", "onnxruntime") for bs in (1, 64)],
            f"{100 * float(hits[k].mean()):.2f}",
            "-" if k == "macs" else f"{100 * float(d.mean()):+.2f} ± {100 * se:.2f}"])
    capped = ("uncapped" if p.get("cap") is None
              else f"capped at `max_layer_reduction={p['cap']}`")
    ran = json.loads((names["latency"] / "stages" / "pruned" / "prune_report.json").read_text())
    planned = p.get("aware_removed_groups")
    same = ("" if planned is None else " The latency row's run removed "
            + ("exactly the planned groups." if ran["removed_groups"] == planned else
               "other groups than planned (its scores were computed on other batches).")
            )
    steps = ", ".join(f"{t['target_macs_reduction']:g} -> {t['ratio']:.3f}"
                      for t in p["bisection"])
    macs_round = ("" if p.get("macs_round_to") is None
                  else f", `round_to={p['macs_round_to']}`")
    head = ["row", "params", "MACs", "eager b1 ms", "eager b64 ms", "ORT b1 ms", "ORT b64 ms",
            "test top-1 %", "paired diff to MACs row ± SE"]
    lines = [
        "# Latency-aware vs MACs-based ranking at equal measured latency\n",
        f"Machine: {machine_info(1, ['onnxruntime'])}.\n",
        f"Plan (`benchmarks/latency_aware.py`): the {p['runtime']} table of B at batch "
        f"{p['batch']} ({p['threads']} thread); both rows {capped}; latency row: "
        f"`target_latency_reduction={p['reduction']}`, `cost=latency`, "
        f"`group_score={p.get('score', 'layer_rms')}`"
        f"{'' if p.get('round_to') is None else ', `round_to=' + str(p['round_to']) + '`'}"
        f"{'' if p.get('round_to') != 'auto' else ' (read ' + str(p['round_to_resolved']) + ')'} "
        f"(predicted {100 * p['aware_prune']['latency']['predicted_reduction']:.1f} % less "
        f"time, {100 * p['aware_prune']['params_reduction']:.1f} % params, "
        f"{100 * p['aware_prune']['macs_reduction']:.1f} % MACs removed); MACs row "
        f"(`group_score={p.get('macs_score', 'layer_rms')}`{macs_round}): the "
        f"`target_macs_reduction` ({p['macs_target']}) whose measured {p['runtime']} latency "
        f"at batch {p['batch']} is closest to the latency row's (bisection: MACs target -> "
        f"its time / the latency row's: {steps}).{same}\n",
        md_table(head, body),
        "Latencies: one thread, all three models timed interleaved in one process, deployment "
        "form (`resprune.deploy`); onnxruntime runs the exported, parity-checked graph.\n",
        "## Commands\n",
    ]
    for k in ("latency", "macs"):
        lines.append(f"- {k}: `{run_command(names[k])}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--runtime", default="onnxruntime", choices=["eager", "onnxruntime"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reduction", type=float, default=0.5)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--epoch-size", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--max-layer-reduction", type=float, default=None,
                    help="cap every layer's pruned share in both rows (vacl's option)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of both rows (fine-tuning; with --score taylor also the batches "
                         "the latency row is scored on, so the plan depends on it)")
    ap.add_argument("--score", choices=["layer_rms", "taylor"], default="layer_rms",
                    help="group score of the latency row")
    ap.add_argument("--macs-score", choices=["layer_rms", "taylor"], default="layer_rms",
                    help="group score of the MACs row")
    ap.add_argument("--round-to", type=lambda v: v if v == "auto" else int(v), default=None,
                    help="round the latency row's widths to multiples of N, or auto: the "
                         "table's step, what vacl --cost latency does by default (default: "
                         "exact widths, passed as --round-to 1; the MACs row keeps exact "
                         "widths unless --macs-round-to)")
    ap.add_argument("--macs-round-to", type=int, default=None,
                    help="round the MACs row's widths to multiples of N")
    ap.add_argument("--step", choices=["plan", "run", "report", "all"], default="all")
    ap.add_argument("--out", type=Path, default=RESULTS / "latency_aware.md")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    a.runs.mkdir(parents=True, exist_ok=True)
    plan_file = a.runs / "plan.json"
    if a.step in ("plan", "all") and not plan_file.is_file():
        plan_file.write_text(json.dumps(plan(a.base, a.runtime, a.batch, a.reduction,
                                             a.repeats, a.max_layer_reduction, a.score, a.seed,
                                             a.epoch_size, a.macs_score, a.round_to,
                                             a.macs_round_to),
                                        indent=1))
    p = json.loads(plan_file.read_text())
    if a.step in ("run", "all"):
        from resprune.cli.main import main as cli

        for name, argv_ in commands(a.base, p, a.finetune_epochs, a.epoch_size,
                                    a.seed).items():
            out = a.runs / name
            if (out / "summary.json").is_file():
                continue
            resume = ["--resume"] if out.exists() else []
            if cli([*argv_[1:], "--out", str(out), *resume]) != 0:
                return 1
    if a.step in ("report", "all"):
        a.out.write_text(report(a.base, a.runs, p, a.repeats))
        print(a.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
