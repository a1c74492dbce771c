"""Evidence for ``resprune compress`` on real images: ResNet-56 (shortcut A) on cifar10-mini,
depth and width together against each method alone and against torch-pruning.

Per seed (default 0 1 2), every row starts from the same trained baseline (``--base-runs``:
``base_s{seed}/`` or ``seed{seed}/base/``, trained with ``--priority-gates``; without it the
script trains its own), and every row is the real command line (called in worker processes
through ``resprune.cli.main.main``) or, for torch-pruning, ``benchmarks/_tp_baselines.py``:

- **baseline**: the trained run (with priority gates, folded away for the table);
- **compress**: ``resprune compress BASE --stages implode,vacl,finetune
  --target-params-reduction R``: Network Implosion by accuracy (``--per-step K``,
  ``--max-steps N``, ``--retrain-epochs r``, ``--final-epochs f``, ``--tolerance t``), then
  VACL removing the share of R still missing (``--sparse-epochs S``, ``--finetune-epochs F``,
  ``--lam``, moments form, beta 4), then ``--finetune-final-epochs FF``;
- **implosion alone**: ``resprune implode BASE`` with exactly the compress row's implode-stage
  options (so it should reproduce the compress row's first stage; the results say whether it
  did), or the gate row of the implosion benchmark with ``--reuse-implosion DIR``
  (``DIR/seed{s}/gate``);
- **VACL alone**: ``resprune vacl BASE --target-params-reduction P`` with the compress row's
  vacl-stage options, P = the params reduction the compress row of the same seed reached
  (equal params), S sparsity epochs and ``T - S`` fine-tuning epochs, T = every epoch the
  compress row trained (equal epochs); or the VACL benchmark's ``moments`` row with
  ``--reuse-vacl DIR`` (``DIR/seed{s}/moments``: its own reduction and budget, reported as
  such);
- **torch-pruning GroupNormPruner**: DepGraph group-sparsity training for S epochs (reg
  ``--tp-reg``), ``pruner.step()`` at the same P (channel ratio searched), ``T - S``
  fine-tuning epochs (equal params, equal epochs).

How the epoch budgets line up (per seed, after the baseline): the compress row trains
T = implode's retrainings (r per step tried, at most N steps, + f) + S + F + FF epochs. The
two rows compared with it at equal params (VACL alone, torch-pruning) train S sparsity epochs
and T - S fine-tuning epochs: the same number of epochs, at the same learning rates. The
compress row trains many of its epochs on a shallower net, so equal epochs means it used
*less* CPU time (the seconds are in the results). Implosion alone cannot reach the compress
size (it erases whole units only, while validation accuracy holds); it gets its stage budget
and is compared at its own size.

No decision uses the test set: implosion accepts a step on the validation split, VACL prunes
to a fixed target. Jobs run in ``--jobs`` worker processes (default 2), each with one torch
thread (``OMP_NUM_THREADS=1`` + ``torch.set_num_threads(1)``); a job whose run directory has
``summary.json`` is skipped, an interrupted one is resumed (``--resume``), so the script can
be re-run to fill gaps; the work directory's name encodes the budget. After every job, the
deployed nets (gates folded) are timed on the CPU with one thread at batch 1 and batch 64,
once per distinct architecture, all architectures interleaved
(``resprune.measure.compare.time_models``); speed-up = baseline ms / row ms.

Cost (estimated from the other benchmarks' calibration: one ResNet-56 epoch over
cifar10-mini takes 40-55 s of CPU with channels_last, 60-90 s of wall time on the busy
2-core machine): per seed, baselines excluded, compress ~6 full-epoch equivalents (three
retrainings of a shrinking net, VACL on the imploded net, two epochs of a small net),
implosion alone ~2.5, VACL alone and torch-pruning ~5 each (3 full-size sparsity epochs + 7
epochs of a net with 85 % fewer params): ~19 per seed, three seeds ~25-30 min on two idle
cores, up to twice that on a busy machine, + ~1-2 min of timing.

    .venv/bin/python benchmarks/compress_cifar10_mini.py --base-runs runs/bench/e20
    .venv/bin/python benchmarks/compress_cifar10_mini.py --base-runs runs/bench/e20 \\
        --reuse-implosion runs/bench/e20
    .venv/bin/python benchmarks/compress_cifar10_mini.py --smoke      # plumbing check

Writes ``benchmarks/results/compress_cifar10_mini.md`` (tables, budgets, verdict, the exact
command line, machine info) and copies the plots of seed 0's compress run (``sizes.png`` and
the stages' plots) next to it. ``--smoke`` (ResNet-14 width 8 trained 1 epoch with priority
gates in its own work directory, one seed, one epoch per stage, the one implosion step
accepted whatever the accuracy) writes its table into the work directory only, never into
benchmarks/results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    DATA_DIR,
    REPO,
    RESULTS,
    Job,
    baselines_line,
    find_base,
    has_files,
    machine_info,
    md_table,
    mean_std,
    measure_runs,
    plural,
    read_summary,
    run_cli,
    run_tp,
)
from _common import schedule as run_jobs

from resprune.vacl import SCORES as GROUP_SCORES

NAME = "compress_cifar10_mini"
ROWS = {  # row key -> label, in table order
    "base": "baseline",
    "implode": "implosion alone",
    "vacl": "VACL alone (same params as compress)",
    "compress": "compress: implode -> vacl -> finetune",
    "tp_groupnorm": "torch-pruning GroupNormPruner (same params as compress)",
}
DEPS = {"base": [], "compress": ["base"], "implode": ["base"], "vacl": ["compress"],
        "tp_groupnorm": ["compress"]}
START_ORDER = ["base", "compress", "implode", "vacl", "tp_groupnorm"]  # rows others wait for
EQUAL_PARAMS = ("vacl", "tp_groupnorm")  # rows pruned to the compress row's reduction
EQUAL_PARAMS_SLACK = 1.0  # percentage points of params reduction counted as "the same"
# CPU timing: batch -> (warm-up rounds, timed rounds); batch 1 is short, so more rounds
TIMING = {1: (5, 30), 64: (1, 7)}
TARGET = {"params": 85.0, "macs": 70.0}  # the reductions (%) the verdict checks


# -- the plan --------------------------------------------------------------------------------

def num(x: float) -> str:
    return f"{x:g}".replace(".", "p").replace("-", "m")


def budget(a: argparse.Namespace) -> dict[str, Any]:
    """Every option that changes what the runs compute (it names the work directory)."""
    return {k: getattr(a, k) for k in (
        "model", "width", "score", "per_step", "max_steps", "retrain_epochs", "retrain_lr",
        "final_epochs", "tolerance", "lam", "sparse_epochs", "sparse_lr", "finetune_epochs",
        "finetune_lr", "finetune_final_epochs", "finetune_final_lr",
        "target_params_reduction", "tp_reg", "batch_size", "channels_last", "group_score")}


def workdir_of(a: argparse.Namespace) -> Path:
    """``runs_root/<readable budget>-<hash of the whole budget and the baselines>``."""
    width = f"-w{a.width}" if a.width is not None else ""
    tag = (f"{'smoke-' if a.smoke else ''}{a.model}{width}-k{a.per_step}-n{a.max_steps}"
           f"-r{a.retrain_epochs}-f{a.final_epochs}-t{num(a.tolerance)}-S{a.sparse_epochs}"
           f"-F{a.finetune_epochs}-lam{num(a.lam)}-FF{a.finetune_final_epochs}"
           f"-R{num(a.target_params_reduction)}")
    bases = (str(a.base_runs) if a.base_runs is not None
             else f"own-b{a.base_epochs}-w{a.base_warmup_epochs:g}-lr{a.base_lr:g}")
    digest = hashlib.sha1(json.dumps([budget(a), bases], sort_keys=True).encode()).hexdigest()
    return a.runs_root / f"{tag}-{digest[:8]}"


def base_dir(a: argparse.Namespace, seed: int, workdir: Path) -> Path:
    """The baseline of ``seed``: in ``--base-runs``, else this script's own (the smoke's in
    its work directory, others shared by every budget under ``runs_root/bases``)."""
    if a.base_runs is not None:
        return find_base(a.base_runs, seed)
    width = f"-w{a.width}" if a.width is not None else ""
    root = workdir if a.smoke else (
        a.runs_root / "bases"
        / f"{a.model}{width}-b{a.base_epochs}-w{num(a.base_warmup_epochs)}-lr{num(a.base_lr)}")
    return root / f"seed{seed}" / "base"


def reused_dir(a: argparse.Namespace, row: str, seed: int) -> Path | None:
    """Where a reused row of another benchmark lies (None: this script runs the row)."""
    if row == "implode" and a.reuse_implosion is not None:
        return a.reuse_implosion / f"seed{seed}" / "gate"
    if row == "vacl" and a.reuse_vacl is not None:
        return a.reuse_vacl / f"seed{seed}" / "moments"
    return None


def same_base(run_dir: Path, base: Path) -> bool:
    s = read_summary(run_dir) or {}
    src = (s.get("config") or {}).get("run") or (s.get("base") or {}).get("run")
    return src is not None and Path(src).resolve() == base.resolve()


def make_jobs(a: argparse.Namespace, workdir: Path) -> dict[str, Job]:
    jobs = {}
    for s in a.seeds:
        base = base_dir(a, s, workdir)
        for row in ROWS:
            reused = reused_dir(a, row, s)
            run_dir = base if row == "base" else reused or workdir / f"seed{s}" / row
            job = Job(s, row, run_dir, DEPS[row])
            if reused is not None:  # never run here: there and from this baseline, or missing
                if read_summary(reused) is None:
                    job.status, job.note = "missing", f"{reused} has no summary.json"
                elif not same_base(reused, base):
                    job.status, job.note = "missing", f"{reused} was not pruned from {base}"
                else:
                    job.status = "skipped"
                if job.note:
                    print(f"[missing] {job.key}: {job.note}", flush=True)
            jobs[job.key] = job
    return jobs


def implode_options(a: argparse.Namespace) -> list[str]:
    return ["--score", a.score, "--per-step", str(a.per_step), "--max-steps",
            str(a.max_steps), "--retrain-epochs", str(a.retrain_epochs), "--retrain-lr",
            str(a.retrain_lr), "--final-epochs", str(a.final_epochs), "--tolerance",
            str(a.tolerance)]


def vacl_options(a: argparse.Namespace, finetune_epochs: int) -> list[str]:
    return ["--form", "moments", "--beta", "4", "--lam", str(a.lam), "--sparse-epochs",
            str(a.sparse_epochs), "--sparse-lr", str(a.sparse_lr), "--finetune-epochs",
            str(finetune_epochs), "--finetune-lr", str(a.finetune_lr), "--group-score",
            a.group_score]


def equal_budget(jobs: dict[str, Job], seed: int) -> tuple[float, int]:
    """(params reduction the compress row of ``seed`` reached, as a fraction; its epochs)."""
    c = read_summary(jobs[f"seed{seed}/compress"].run_dir)
    return c["params_removed_pct"] / 100, int(c["epochs"])


def job_call(job: Job, a: argparse.Namespace, jobs: dict[str, Job]):
    """(worker function, its first argument) of a job."""
    base = jobs[f"seed{job.seed}/base"].run_dir
    common = ["--no-progress", "--batch-size", str(a.batch_size), "--out", str(job.run_dir)]
    if a.channels_last:
        common.append("--channels-last")
    if has_files(job.run_dir):
        common.append("--resume")  # an interrupted job continues where it stopped
    if job.row == "base":
        width = ["--width", str(a.width)] if a.width is not None else []
        return run_cli, ["train", "--model", a.model, *width, "--priority-gates", "--data",
                         "cifar10", "--data-dir", str(a.data_dir), "--seed", str(job.seed),
                         "--epochs", str(a.base_epochs), "--lr", str(a.base_lr),
                         "--warmup-epochs", str(a.base_warmup_epochs), *common]
    if job.row == "compress":
        return run_cli, ["compress", str(base), "--stages", "implode,vacl,finetune",
                         "--target-params-reduction", str(a.target_params_reduction),
                         *implode_options(a), *vacl_options(a, a.finetune_epochs),
                         "--finetune-final-epochs", str(a.finetune_final_epochs),
                         "--finetune-final-lr", str(a.finetune_final_lr), *common]
    if job.row == "implode":
        return run_cli, ["implode", str(base), *implode_options(a), *common]
    reduction, total = equal_budget(jobs, job.seed)
    finetune = max(total - a.sparse_epochs, 0)
    if job.row == "vacl":
        return run_cli, ["vacl", str(base), *vacl_options(a, finetune),
                         "--target-params-reduction", repr(reduction), *common]
    return run_tp, {"base_run": str(base), "out": str(job.run_dir), "method": "groupnorm",
                    "params_reduction": reduction, "sparse_epochs": a.sparse_epochs,
                    "finetune_epochs": finetune, "sparse_lr": a.sparse_lr,
                    "finetune_lr": a.finetune_lr, "reg": a.tp_reg,
                    "batch_size": a.batch_size, "channels_last": a.channels_last}


# -- measuring -------------------------------------------------------------------------------

def measure(run_dirs: list[Path]) -> dict[Path, dict[str, Any]]:
    """params / MACs / depth of each run's deployed net and its CPU ms at batch 1 and 64
    (``benchmarks._common.measure_runs``: interleaved, once per distinct architecture)."""
    print(f"timing the distinct architectures at batch sizes {list(TIMING)} ...", flush=True)
    return measure_runs(run_dirs, TIMING)


def collect(jobs: dict[str, Job], a: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Per row, one record per seed whose baseline and row are finished."""
    ok = [j for j in jobs.values() if read_summary(j.run_dir) is not None
          and j.status not in ("missing", "failed", "blocked")]
    measured = measure(list(dict.fromkeys(j.run_dir for j in ok)))
    rows: dict[str, list[dict[str, Any]]] = {r: [] for r in ROWS}
    for job in sorted(ok, key=lambda j: j.seed):
        base = jobs[f"seed{job.seed}/base"].run_dir
        if base not in measured:
            continue
        s, m, b = read_summary(job.run_dir), measured[job.run_dir], measured[base]
        pr = s.get("prune") or {}
        rows[job.row].append({
            "seed": job.seed, **m,
            "params_removed": 100 * (b["params"] - m["params"]) / b["params"],
            "macs_removed": 100 * (b["macs"] - m["macs"]) / b["macs"],
            "speedup1": b["ms1"] / m["ms1"], "speedup64": b["ms64"] / m["ms64"],
            "top1": s.get("top1"), "val_top1": s.get("val_top1"),
            "epochs": s.get("epochs"), "seconds": s.get("seconds"),
            "epochs_detail": s.get("epochs_detail"), "config": s.get("config") or {},
            "stop": s.get("stop_reason"), "erased": len(s.get("erased_units") or []),
            "target_reached": pr.get("target_reached", (s.get("budget") or {}).get("reached")),
            "stages": s.get("stages"), "ratio": s.get("pruning_ratio"),
            "reused": reused_dir(a, job.row, job.seed) is not None, "run_dir": job.run_dir,
        })
    return rows


# -- reporting -------------------------------------------------------------------------------

def mean(recs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in recs if r.get(key) is not None]
    return statistics.mean(vals) if vals else None


def fmt_count(n: float) -> str:
    return f"{n / 1e6:.3f} M" if n >= 1e5 else f"{n / 1e3:.2f} k"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def table(rows: dict[str, list[dict[str, Any]]]) -> str:
    head = ["row", "seeds", "params", "params removed %", "MACs", "MACs removed %",
            "test top-1 %", "val top-1 %", "CPU speed-up b1", "CPU speed-up b64", "depth",
            "epochs"]
    body = []
    for row, recs in rows.items():
        if not recs:
            body.append([ROWS[row], "0"] + ["-"] * (len(head) - 2))
            continue
        body.append([
            ROWS[row], len(recs), fmt_count(mean(recs, "params")),
            mean_std([r["params_removed"] for r in recs]), fmt_count(mean(recs, "macs")),
            mean_std([r["macs_removed"] for r in recs]),
            mean_std([r["top1"] for r in recs], 100),
            mean_std([r["val_top1"] for r in recs], 100),
            mean_std([r["speedup1"] for r in recs]) + "x",
            mean_std([r["speedup64"] for r in recs]) + "x",
            mean_std([r["depth"] for r in recs], digits=1),
            mean_std([r["epochs"] for r in recs], digits=1)])
    return md_table(head, body)


def detail_table(rows: dict[str, list[dict[str, Any]]]) -> str:
    head = ["row", "seed", "params removed %", "MACs removed %", "depth", "test top-1 %",
            "val top-1 %", "CPU ms b1", "CPU ms b64", "epochs (detail)", "train s", "note"]
    body = []
    for row, recs in rows.items():
        for r in recs:
            detail = r["epochs_detail"]
            if r["stages"]:
                detail = {st["name"]: st["epochs"] for st in r["stages"]}
            note = []
            if row == "implode":
                note.append(f"{plural(r['erased'], 'unit')} erased, stop {r['stop']}")
            if row == "compress":
                note.append(f"target {'reached' if r['target_reached'] else 'NOT reached'}")
            if row == "vacl" and r["target_reached"] is False:
                note.append("target NOT reached")
            if r["ratio"] is not None:
                note.append(f"channel ratio {r['ratio']:.4f}")
            if r["reused"]:
                note.append(f"reused `{r['run_dir']}`")
            body.append([ROWS[row], r["seed"], f"{r['params_removed']:.2f}",
                         f"{r['macs_removed']:.2f}", r["depth"], pct(r["top1"]),
                         pct(r["val_top1"]), f"{r['ms1']:.2f}", f"{r['ms64']:.1f}",
                         f"{r['epochs']} ({', '.join(f'{k} {v}' for k, v in detail.items())})"
                         if detail else r["epochs"], "-" if r["seconds"] is None
                         else f"{r['seconds']:.0f}", "; ".join(note) or "-"])
    return md_table(head, body)


def stages_table(rows: dict[str, list[dict[str, Any]]]) -> str:
    head = ["seed", "stage", "params", "MACs", "depth", "params removed % (vs previous)",
            "MACs removed % (vs previous)", "val top-1 %", "test top-1 %", "epochs"]
    body = []
    for r in rows["compress"]:
        for st in r["stages"] or []:
            body.append([r["seed"], st["name"], fmt_count(st["params"]),
                         fmt_count(st["macs"]), st["depth"], f"{st['params_removed_pct']:.2f}",
                         f"{st['macs_removed_pct']:.2f}", pct(st.get("val_top1")),
                         pct(st.get("top1")), st["epochs"]])
    return md_table(head, body)


def budget_lines(rows: dict[str, list[dict[str, Any]]], a: argparse.Namespace) -> list[str]:
    """How the rows' epochs line up, from what the runs actually recorded."""
    comp = {r["seed"]: r for r in rows["compress"]}
    lines = [
        "| row | training after the baseline (per seed) | epochs (mean over seeds) | train "
        "seconds (mean) |", "|---|---|---|---|"]

    def line(row: str, what: str) -> None:
        recs = rows[row]
        lines.append(f"| {ROWS[row]} | {what} | {mean_std([r['epochs'] for r in recs], digits=1)}"
                     f" | {mean_std([r['seconds'] for r in recs], digits=0)} |")

    imp = (f"r = {plural(a.retrain_epochs, 'epoch')} at lr {a.retrain_lr} after each step "
           f"({plural(a.per_step, 'unit')} per step, at most {plural(a.max_steps, 'step')}, "
           f"a rejected step's retraining counts too) + {plural(a.final_epochs, 'final epoch')}")
    line("compress", f"implode stage: {imp}; vacl stage: S = {a.sparse_epochs} sparsity "
                     f"(lr {a.sparse_lr}, lambda {a.lam}) + F = {a.finetune_epochs} "
                     f"fine-tuning (lr {a.finetune_lr}); finetune stage: FF = "
                     f"{a.finetune_final_epochs} (lr {a.finetune_final_lr}); T = their sum")
    if a.reuse_implosion is not None:
        cfgs = [r["config"] for r in rows["implode"]]
        ours = {"score": a.score, "per_step": a.per_step, "max_steps": a.max_steps,
                "retrain_epochs": a.retrain_epochs, "retrain_lr": a.retrain_lr,
                "final_epochs": a.final_epochs, "tolerance": a.tolerance}
        differ = sorted({f"{k} {c.get(k)} (stage: {v})" for c in cfgs for k, v in ours.items()
                         if c.get(k) != v})
        line("implode", "reused from `--reuse-implosion`: " + (", ".join(
            f"{k} {cfgs[0].get(k)}" for k in ours) if cfgs else "none found") + (
            "" if not cfgs else "; differs from the compress row's implode stage in "
            + ", ".join(differ) if differ else "; the same options as the compress row's "
            "implode stage"))
    else:
        line("implode", f"the compress row's implode stage, run alone: {imp}")
    if a.reuse_vacl is not None:
        cfg = rows["vacl"][0]["config"] if rows["vacl"] else {}
        line("vacl", "reused from `--reuse-vacl`: " + (", ".join(
            f"{k} {cfg.get(k)}" for k in ("lam", "beta", "sparse_epochs", "finetune_epochs",
                                          "target_params_reduction")) if cfg else "none found"))
    else:
        line("vacl", f"S = {a.sparse_epochs} sparsity epochs (the vacl stage's options) + "
                     "T - S fine-tuning, pruned to the compress row's params reduction")
    line("tp_groupnorm", f"S = {a.sparse_epochs} group-sparsity epochs (reg {a.tp_reg}) + "
                         "T - S fine-tuning, pruned to the compress row's params reduction")
    same = all(r["epochs"] == comp[r["seed"]]["epochs"] for row in EQUAL_PARAMS
               for r in rows[row] if r["seed"] in comp)
    lines.append("")
    lines.append("Equal epochs at equal params: " + (
        "yes, every seed's VACL-alone and torch-pruning rows trained as many epochs as its "
        "compress row." if same else "NO for some seed (see the per-seed table): a reused "
        "run has its own budget."))
    return lines


def equal_params(rows: dict[str, list[dict[str, Any]]], row: str) -> bool:
    comp = {r["seed"]: r["params_removed"] for r in rows["compress"]}
    recs = [r for r in rows[row] if r["seed"] in comp]
    return bool(recs) and all(abs(r["params_removed"] - comp[r["seed"]]) <= EQUAL_PARAMS_SLACK
                              for r in recs)


def paired(rows: dict[str, list[dict[str, Any]]], row: str) -> str:
    """compress minus ``row``, test top-1 points, per seed paired: mean ± std."""
    other = {r["seed"]: r["top1"] for r in rows[row]}
    diffs = [100 * (r["top1"] - other[r["seed"]]) for r in rows["compress"]
             if r["seed"] in other]
    return mean_std(diffs) if diffs else "-"


def verdict(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The plain verdict against the target, and where it falls short, from the numbers."""
    c, b = rows["compress"], rows["base"]
    if not c or not b:
        return ["**Verdict: no compress or baseline row finished; nothing to judge.**"]
    pr, mr = mean(c, "params_removed"), mean(c, "macs_removed")
    acc_c, acc_b = 100 * mean(c, "top1"), 100 * mean(b, "top1")
    spread = 100 * statistics.stdev(r["top1"] for r in b) if len(b) > 1 else 0.0
    checks, short = {}, []
    checks["params"] = pr >= TARGET["params"]
    if not checks["params"]:
        unreached = [f"seed {r['seed']}" for r in c if not r["target_reached"]]
        short.append(f"params: {pr:.2f} % removed, below {TARGET['params']:g} % ("
                     + (f"the budget was not reached for {', '.join(unreached)}: the vacl "
                        "stage keeps one channel per layer and cannot remove more"
                        if unreached else "the --target-params-reduction asked is lower")
                     + ")")
    checks["macs"] = mr >= TARGET["macs"]
    if not checks["macs"]:
        vacl_st = [st for r in c for st in r["stages"] or [] if st["name"] == "vacl"]
        short.append(
            f"MACs: {mr:.2f} % removed, below {TARGET['macs']:g} %. The budget is on params; "
            f"the vacl stage removed {mean_std([st['params_removed_pct'] for st in vacl_st])} "
            f"% of its input's params but {mean_std([st['macs_removed_pct'] for st in vacl_st])}"
            " % of its MACs (a CIFAR ResNet's three stages cost about the same MACs while the "
            "last, 8x8 maps, holds ~3/4 of the params, so a params target can be met by "
            "thinning mostly the last stage; see the per-layer widths in the compress run's "
            "stages/2-vacl/summary.json)")
    checks["accuracy"] = acc_c >= acc_b - spread
    if not checks["accuracy"]:
        short.append(f"accuracy: test top-1 {acc_c:.2f} % vs the baseline's {acc_b:.2f} ± "
                     f"{spread:.2f} %, {acc_b - spread - acc_c:.2f} points below the lower "
                     "end of the seed spread (compress trained "
                     f"{mean_std([r['epochs'] for r in c], digits=1)} epochs after the "
                     "baseline in all, see the budget table)")
    if len(b) < 2:
        short.append("one seed only: the baseline has no spread; the accuracy check is "
                     "against its single value")
    lines = []
    single = {}
    for row in ("vacl", "implode"):
        recs = rows[row]
        if not recs:
            single[row] = None
            short.append(f"{ROWS[row]}: no finished run to compare with")
            continue
        acc = 100 * mean(recs, "top1")
        red = mean(recs, "params_removed")
        if row == "vacl":
            at_equal = equal_params(rows, "vacl")
            single[row] = at_equal and acc_c > acc
            if not at_equal:
                short.append(f"VACL alone is not at the compress row's params reduction "
                             f"({red:.2f} % vs {pr:.2f} %): no equal-params comparison")
            elif not single[row]:
                short.append(f"VACL alone at equal params: {acc:.2f} % test top-1, compress "
                             f"{acc_c:.2f} % (paired difference {paired(rows, 'vacl')} points)")
        else:  # depth only: it stops well short of the compress size
            single[row] = pr > red and acc_c >= acc
            if not single[row]:
                short.append(f"implosion alone ({red:.2f} % params removed, {acc:.2f} % "
                             f"test top-1) is more accurate than compress ({pr:.2f} %, "
                             f"{acc_c:.2f} %); it cannot be run at equal params (it erases "
                             "whole units only while validation accuracy holds)")
    met = all(checks.values()) and all(single.values())
    lines.append(
        f"**Verdict: target {'MET' if met else 'NOT MET'}.** Target: compress removes >= "
        f"{TARGET['params']:g} % of params and >= {TARGET['macs']:g} % of MACs with test top-1 "
        "within the seed spread of the baseline (mean >= baseline mean - baseline std), and "
        "beats both single methods at equal params. Measured: compress removed "
        f"{pr:.2f} % of params and {mr:.2f} % of MACs, test top-1 {acc_c:.2f} % vs the "
        f"baseline's {acc_b:.2f} ± {spread:.2f} %.")
    if rows["vacl"]:
        lines.append(f"- vs VACL alone ({mean(rows['vacl'], 'params_removed'):.2f} % params "
                     f"removed): compress - VACL = {paired(rows, 'vacl')} test top-1 points "
                     "(per seed, paired).")
    if rows["implode"]:
        lines.append(f"- vs implosion alone ({mean(rows['implode'], 'params_removed'):.2f} % "
                     f"params removed, not at equal params): compress - implosion = "
                     f"{paired(rows, 'implode')} test top-1 points.")
    if rows["tp_groupnorm"]:
        lines.append(f"- vs torch-pruning GroupNormPruner (equal params: "
                     f"{'yes' if equal_params(rows, 'tp_groupnorm') else 'NO'}): compress - "
                     f"torch-pruning = {paired(rows, 'tp_groupnorm')} test top-1 points "
                     "(not part of the target).")
    if short:
        lines.append("\nWhere it falls short:\n")
        lines += [f"- {s}" for s in short]
    return lines


def same_as_stage(rows: dict[str, list[dict[str, Any]]]) -> str | None:
    """Whether the implosion-alone row reproduced the compress row's implode stage."""
    stage = {r["seed"]: r["stages"][0] for r in rows["compress"] if r["stages"]}
    recs = [r for r in rows["implode"] if r["seed"] in stage and not r["reused"]]
    if not recs:
        return None
    same = [r["seed"] for r in recs if r["depth"] == stage[r["seed"]]["depth"]
            and r["top1"] == stage[r["seed"]]["top1"]]
    if len(same) == len(recs):
        return ("The implosion-alone row reproduced the compress row's implode stage exactly "
                "(same depth and test top-1 for every seed): the stage is the real command.")
    return (f"The implosion-alone row matched the compress row's implode stage for seeds "
            f"{same or 'none'} of {[r['seed'] for r in recs]} (same options; a difference "
            "means a non-deterministic step).")


def copy_plots(results: Path, jobs: dict[str, Job], a: argparse.Namespace) -> list[str]:
    """Seed 0's compress plots (``sizes.png`` and every stage's) next to the results file."""
    job = jobs.get(f"seed{a.seeds[0]}/compress")
    if job is None or read_summary(job.run_dir) is None:
        return []
    out = []
    sources = [(p, p.name) for p in sorted(job.run_dir.glob("*.png"))]
    sources += [(p, f"{p.parent.name}_{p.name}")
                for p in sorted((job.run_dir / "stages").glob("*/*.png"))]
    results.parent.mkdir(parents=True, exist_ok=True)
    for src, name in sources:
        target = results.parent / f"{results.stem}_{name}"
        shutil.copyfile(src, target)
        out.append(target.name)
    return out


def write_results(path: Path, rows, jobs, a, argv, workdir: Path, wall: float) -> None:
    plots = copy_plots(path, jobs, a)
    failed = [f"{j.key} ({j.status}: {j.note})" for j in jobs.values()
              if j.status in ("failed", "blocked", "missing")]
    base0 = read_summary(jobs[f"seed{a.seeds[0]}/base"].run_dir) or {}
    bcfg = base0.get("config") or {}
    cmd = shlex.join([".venv/bin/python", f"benchmarks/{NAME}.py", *argv])
    sources = []
    for row, opt, where in (("implode", "--reuse-implosion", a.reuse_implosion),
                            ("vacl", "--reuse-vacl", a.reuse_vacl)):
        sources.append(f"{ROWS[row]}: " + (
            f"reused runs of another benchmark ({opt} `{where}`)" if where is not None
            else "run here through the real CLI"))
    text = [
        f"# resprune compress on cifar10-mini: {base0.get('model', a.model)} (shortcut A), "
        "depth and width together\n",
        "Command (from the repository root):\n", f"```\n{cmd}\n```\n",
        baselines_line([jobs[f"seed{s}/base"].run_dir for s in a.seeds]),
        f"Machine: {machine_info(a.jobs, ('torch-pruning',))}. Wall time of this invocation: "
        f"{wall / 60:.1f} min (runs already finished were reused). Work directory: "
        f"`{workdir}`; baselines: `{jobs[f'seed{a.seeds[0]}/base'].run_dir}` and the other "
        f"seeds' beside it. Seeds {' '.join(map(str, a.seeds))}.\n",
        f"Baseline: {base0.get('model', a.model)} trained "
        f"{plural(base0['epochs'], 'epoch') if 'epochs' in base0 else '? epochs'} "
        f"with priority gates (lr {bcfg.get('lr', '?')}, batch {bcfg.get('batch_size', '?')}, "
        f"cosine, channels_last {bcfg.get('channels_last', '?')}). compress target: "
        f"--target-params-reduction {a.target_params_reduction}. Sources: "
        + "; ".join(sources) + ".\n",
        "Accuracies: test = the 1017 official test images in cifar10-mini, never used for a "
        "decision; val = the seeded 10 % split of the training images (implosion accepts "
        "steps on it). Params / MACs / depth of the deployed nets (priority gates folded), "
        "removed % vs the same seed's baseline. CPU speed-up = baseline ms / row ms, one "
        "thread, eager PyTorch, timed after all training, once per distinct architecture, "
        "all architectures interleaved (`resprune.measure.compare.time_models`, each round "
        "times every net once, alternating the order); medians of "
        + ", ".join(f"{r} runs at batch {bs} (after {w} warm-up)"
                    for bs, (w, r) in TIMING.items())
        + ". Mean ± sample standard deviation over seeds. Epochs: training after the "
        "baseline (the baseline row: its own training).\n",
        table(rows),
        *verdict(rows), "",
        "## Budgets: how the epochs line up\n", *budget_lines(rows, a), "",
        "## compress, stage by stage\n",
        "Each stage's params / MACs removed are relative to the stage before (the first: the "
        "baseline with its gates).\n", stages_table(rows),
        "## Per seed\n", detail_table(rows),
    ]
    note = same_as_stage(rows)
    if note:
        text.append(note + "\n")
    if failed:
        text.append("Missing rows:\n\n" + "".join(f"- {f}\n" for f in failed))
    for p in plots:
        text.append(f"![{p}]({p})\n")
    if plots:
        text.append(f"Plots: the compress run of seed {a.seeds[0]} (sizes after each stage; "
                    "the stages' own plots).\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text), encoding="utf-8")


# -- main ------------------------------------------------------------------------------------

def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="plumbing check: resnet14 width 8 trained 1 epoch in its own work "
                        "directory, seed 0, 1 epoch per stage, one implosion step accepted")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (0 1 2)")
    p.add_argument("--jobs", type=int, default=2, help="parallel worker processes (2)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing; write the results of the jobs already finished")
    g = p.add_argument_group("baselines")
    g.add_argument("--base-runs", type=Path, default=None,
                   help="directory of trained baselines with priority gates (base_s{seed}/ or "
                        "seed{seed}/base/, e.g. runs/bench/e20); default: train "
                        "them under runs/bench/compress_cifar10_mini/bases/")
    g.add_argument("--model", default=None, help="model of baselines trained here (resnet56)")
    g.add_argument("--width", type=int, default=None,
                   help="stem width of baselines trained here (zoo default; smoke 8)")
    g.add_argument("--base-epochs", type=int, default=None,
                   help="epochs of baselines trained here (15)")
    g.add_argument("--base-lr", type=float, default=0.1, help="(0.1)")
    g.add_argument("--base-warmup-epochs", type=float, default=None,
                   help="linear lr warm-up of baselines trained here (2; smoke 0)")
    g = p.add_argument_group("implode stage and implosion alone")
    g.add_argument("--score", default="gate", choices=["gate", "norm", "gate_bn"])
    g.add_argument("--per-step", type=int, default=None, help="units erased per step (4)")
    g.add_argument("--max-steps", type=int, default=None, help="at most this many steps (3)")
    g.add_argument("--retrain-epochs", type=int, default=None,
                   help="retraining epochs after each step (1)")
    g.add_argument("--retrain-lr", type=float, default=0.01, help="(0.01)")
    g.add_argument("--final-epochs", type=int, default=None, help="final retraining (0)")
    g.add_argument("--tolerance", type=float, default=None,
                   help="val top-1 points a step may lose (0; smoke 100)")
    g = p.add_argument_group("vacl stage and VACL alone")
    g.add_argument("--lam", type=float, default=2e-3, help="VACL lambda (2e-3)")
    g.add_argument("--group-score", choices=GROUP_SCORES, default="layer_rms",
                   help="VACL's group ranking (layer_rms)")
    g.add_argument("--sparse-epochs", type=int, default=None, help="S (3)")
    g.add_argument("--sparse-lr", type=float, default=0.01, help="(0.01)")
    g.add_argument("--finetune-epochs", type=int, default=None,
                   help="F, the vacl stage's fine-tuning (2)")
    g.add_argument("--finetune-lr", type=float, default=0.01, help="(0.01)")
    g = p.add_argument_group("compress")
    g.add_argument("--finetune-final-epochs", type=int, default=None,
                   help="FF, the finetune stage (2)")
    g.add_argument("--finetune-final-lr", type=float, default=0.01, help="(0.01)")
    g.add_argument("--target-params-reduction", type=float, default=None,
                   help="compress --target-params-reduction R (0.85; smoke 0.7)")
    g.add_argument("--tp-reg", type=float, default=5e-4,
                   help="torch-pruning GroupNormPruner reg (5e-4)")
    g = p.add_argument_group("reuse rows of the other benchmarks")
    g.add_argument("--reuse-implosion", type=Path, default=None, metavar="DIR",
                   help="implosion alone = DIR/seed{s}/gate (implosion_cifar10_mini's gate "
                        "row, e.g. its --workdir) instead of running it here")
    g.add_argument("--reuse-vacl", type=Path, default=None, metavar="DIR",
                   help="VACL alone = DIR/seed{s}/moments (vacl_cifar10_mini's work "
                        "directory; its own params reduction and budget) instead of running it")
    g = p.add_argument_group("running")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="train in the default memory format (channels_last is faster on CPU)")
    g.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help="cifar10-mini (for baselines trained here)")
    g.add_argument("--runs-root", type=Path, default=REPO / "runs" / "bench" / NAME,
                   help=f"where runs go (default runs/bench/{NAME})")
    g.add_argument("--results", type=Path, default=None,
                   help=f"markdown file to write (default benchmarks/results/{NAME}.md; "
                        "smoke: inside the work directory)")
    a = p.parse_args(argv)
    real = {"model": "resnet56", "seeds": [0, 1, 2], "base_epochs": 15, "per_step": 4,
            "max_steps": 3, "retrain_epochs": 1, "final_epochs": 0, "tolerance": 0.0,
            "sparse_epochs": 3, "finetune_epochs": 2, "finetune_final_epochs": 2,
            "target_params_reduction": 0.85, "base_warmup_epochs": 2.0}
    smoke = {"model": "resnet14", "width": 8, "seeds": [0], "base_epochs": 1, "per_step": 1,
             "max_steps": 1, "retrain_epochs": 1, "final_epochs": 0, "tolerance": 100.0,
             "sparse_epochs": 1, "finetune_epochs": 1, "finetune_final_epochs": 1,
             "target_params_reduction": 0.7, "base_warmup_epochs": 0.0}
    for k, v in (smoke if a.smoke else real).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    for k in ("jobs", "per_step", "max_steps", "batch_size"):
        if getattr(a, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    for k in ("base_epochs", "retrain_epochs", "final_epochs", "sparse_epochs",
              "finetune_epochs", "finetune_final_epochs"):
        if getattr(a, k) < 0:
            p.error(f"--{k.replace('_', '-')} must be >= 0")
    for k in ("tolerance", "lam", "tp_reg", "base_lr", "retrain_lr", "sparse_lr",
              "finetune_lr", "finetune_final_lr"):
        if not math.isfinite(getattr(a, k)) or getattr(a, k) < 0:
            p.error(f"--{k.replace('_', '-')} must be a number >= 0")
    if not 0 < a.target_params_reduction < 1:
        p.error("--target-params-reduction must be in (0, 1)")
    if a.base_runs is None and not (a.data_dir / "cifar-10-batches-py").is_dir():
        p.error(f"{a.data_dir} has no cifar-10-batches-py/ (cifar10-mini lives in "
                "../shared/datasets/cifar10-mini beside the repository)")
    for k in ("data_dir", "runs_root", "base_runs", "reuse_implosion", "reuse_vacl"):
        if getattr(a, k) is not None:
            setattr(a, k, getattr(a, k).resolve())
    if a.smoke and a.results is not None and a.results.resolve().is_relative_to(RESULTS):
        p.error("--smoke never writes into benchmarks/results (its table goes into its work "
                "directory)")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    started = time.time()
    workdir = workdir_of(a)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "budget.json").write_text(json.dumps(
        {**budget(a), "base_runs": str(a.base_runs)}, indent=1, sort_keys=True) + "\n")
    results = a.results or (workdir / f"{NAME}_smoke.md" if a.smoke else RESULTS / f"{NAME}.md")
    jobs = make_jobs(a, workdir)
    print(f"work directory {workdir}; {len(jobs)} jobs, {a.jobs} at a time", flush=True)
    run_jobs(jobs, START_ORDER, lambda job: job_call(job, a, jobs), a.jobs, workdir,
             report_only=a.report_only)
    print("measuring the finished runs (CPU timing once per architecture) ...", flush=True)
    rows = collect(jobs, a)
    write_results(results, rows, jobs, a, argv, workdir, time.time() - started)
    print(table(rows))
    print("\n".join(verdict(rows)))
    print(f"wrote {results} in {(time.time() - started) / 60:.1f} min", flush=True)
    return 1 if any(j.status in ("failed", "blocked", "missing") for j in jobs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
