"""Evidence for VACL on real images: ResNet-56 (shortcut A) on cifar10-mini, against
torch-pruning at the same parameter reduction.

Per seed (default 0 1 2), every row starts from the same trained baseline and gets the same
epoch budget (``--sparse-epochs`` S + ``--finetune-epochs`` F):

- **baseline**: ``resprune train --model resnet56`` for ``--base-epochs`` (or a run of
  ``--base-runs``);
- **VACL moments**: ``resprune vacl BASE --form moments --beta 4 --target-params-reduction R``:
  S epochs of sparsity training, prune, F epochs of fine-tuning;
- **VACL beta 1**: the same with ``--beta 1``, plain cross-layer group lasso (no variance
  term);
- **torch-pruning GroupNormPruner**: DepGraph group-sparsity training (``pruner.regularize``,
  reg ``--tp-reg``) for S epochs, ``pruner.step()`` at the params reduction the VACL moments
  row of the same seed reached, F epochs of fine-tuning;
- **torch-pruning magnitude**: ``BasePruner`` (= ``MagnitudePruner``) with
  ``GroupMagnitudeImportance(p=2)`` on the baseline at that same reduction, then S + F epochs
  of fine-tuning (no sparsity training, the same total budget).

The two torch-pruning rows (``benchmarks/_tp_baselines.py``) train with resprune's Trainer
on the baseline run's own data split, and save resprune run directories. Torch-pruning alone
cannot prune option-A (zero-padding) shortcuts: it traces the padding as channel-preserving
and the pruned net no longer runs; the rows register resprune's ``PadShortcutPruner`` and
index-map coupling through torch-pruning's ``customized_pruners`` extension point (details
in ``_tp_baselines.py``), so every row prunes the same option-A baseline. Their
``pruning_ratio`` (a fraction of channels) is searched until the params reduction reaches the
VACL row's, so the rows compare at the same size; both prune globally.

No decision uses the test set: the pruning rule is a fixed target, the validation split is
reported only. Jobs run in ``--jobs`` worker processes (default 2), each with one torch thread
(``OMP_NUM_THREADS=1`` + ``torch.set_num_threads(1)``); a job whose run directory already has
``summary.json`` is skipped, an interrupted one is resumed, so the script can be re-run to
fill gaps. The work directory's name encodes the budget. CPU latency (batch 64, median of 5
after 2 warm-up runs, one thread) is measured at the end, one model at a time.

Cost: one ResNet-56 epoch over cifar10-mini (3661 training + 407 validation images) takes
~40-55 s of CPU with channels_last on the shared 2-core machine (60-90 s of wall time when
other processes compete); a net with half its params removed trains ~1.5x faster. Default
budget per seed, baselines excluded: 4 rows x (3 + 2) epochs ~ 17 full-epoch equivalents;
three seeds on two idle cores ~23 minutes (+ the latency pass, ~1 minute), up to twice that
on a busy machine. Baselines, when not given, cost 6 epochs per seed more. The budget is far
below a converged ResNet-56: it compares the rows under equal budgets, not with published
full-data numbers. ``--lam`` (VACL) and ``--tp-reg`` (torch-pruning) are not tuned.

    .venv/bin/python benchmarks/vacl_cifar10_mini.py                 # ~25 min, 3 seeds
    .venv/bin/python benchmarks/vacl_cifar10_mini.py --smoke         # plumbing check
    .venv/bin/python benchmarks/vacl_cifar10_mini.py --base-runs runs/bench/bases

Writes ``benchmarks/results/vacl_cifar10_mini.md`` (tables, the exact command line, machine
info) and copies seed 0's VACL plots next to it. ``--smoke`` (ResNet-8, one seed, one epoch
per stage) writes its table into the work directory only.
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
    machine_info,
    md_table,
    mean_std,
    read_summary,
    run_cli,
    run_tp,
)
from _common import schedule as run_jobs

from resprune.vacl import SCORES as GROUP_SCORES

NAME = "vacl_cifar10_mini"
ROWS = {  # row key -> label, in table order
    "base": "baseline",
    "moments": "VACL moments, beta 4",
    "lasso": "VACL beta 1 (cross-layer group lasso)",
    "tp_groupnorm": "torch-pruning GroupNormPruner (sparsity training)",
    "tp_magnitude": "torch-pruning magnitude (no sparsity training)",
}
DEPS = {"base": [], "moments": ["base"], "lasso": ["base"], "tp_groupnorm": ["moments"],
        "tp_magnitude": ["moments"]}
LATENCY_BATCH, LATENCY_WARMUP, LATENCY_REPEATS = 64, 2, 5


# -- the plan --------------------------------------------------------------------------------

def budget_tag(a: argparse.Namespace) -> str:
    def num(x: float) -> str:
        return f"{x:g}".replace(".", "p").replace("-", "m")

    tag = (f"{a.model}-b{a.base_epochs}-blr{num(a.base_lr)}-s{a.sparse_epochs}"
           f"-f{a.finetune_epochs}-lam{num(a.lam)}-r{num(a.target_params_reduction)}"
           f"-tpreg{num(a.tp_reg)}-{a.group_score}")
    return ("smoke-" if a.smoke else "") + tag


def base_dir(a: argparse.Namespace, seed: int) -> Path:
    """The baseline run of ``seed``: in ``--base-runs`` (``base_s{seed}`` or
    ``seed{seed}/base``), else this script's own (shared by every VACL budget)."""
    if a.base_runs is not None:
        return find_base(a.base_runs, seed)
    lr = f"{a.base_lr:g}".replace(".", "p")
    warm = f"-w{a.base_warmup_epochs:g}".replace(".", "p") if a.base_warmup_epochs else ""
    return (a.runs_root / "bases" / f"{a.model}-b{a.base_epochs}{warm}-lr{lr}"
            / f"base_s{seed}")


def make_jobs(a: argparse.Namespace, workdir: Path) -> dict[str, Job]:
    jobs = {}
    for s in a.seeds:
        for row in ROWS:
            run_dir = base_dir(a, s) if row == "base" else workdir / f"seed{s}" / row
            job = Job(s, row, run_dir, DEPS[row])
            jobs[job.key] = job
    return jobs


def job_call(job: Job, a: argparse.Namespace, jobs: dict[str, Job]):
    """(worker function, its first argument) of a job."""
    base = jobs[f"seed{job.seed}/base"].run_dir
    resume = ["--resume"] if job.run_dir.is_dir() and any(job.run_dir.iterdir()) else []
    common = ["--no-progress", "--batch-size", str(a.batch_size), "--out", str(job.run_dir),
              *resume]
    if a.channels_last:
        common.append("--channels-last")
    if job.row == "base":
        return run_cli, ["train", "--model", a.model, "--data", "cifar10", "--data-dir",
                         str(a.data_dir), "--seed", str(job.seed), "--epochs",
                         str(a.base_epochs), "--lr", str(a.base_lr), "--warmup-epochs",
                         str(a.base_warmup_epochs), *common]
    if job.row in ("moments", "lasso"):
        return run_cli, ["vacl", str(base), "--form", "moments", "--beta",
                         "4" if job.row == "moments" else "1", "--lam", str(a.lam),
                         "--sparse-epochs", str(a.sparse_epochs), "--sparse-lr",
                         str(a.sparse_lr), "--finetune-epochs", str(a.finetune_epochs),
                         "--finetune-lr", str(a.finetune_lr), "--target-params-reduction",
                         str(a.target_params_reduction), "--group-score", a.group_score,
                         *common]
    vacl = read_summary(jobs[f"seed{job.seed}/moments"].run_dir)
    return run_tp, {"base_run": str(base), "out": str(job.run_dir),
                    "method": job.row.removeprefix("tp_"),
                    "params_reduction": vacl["params_removed_pct"] / 100,
                    "sparse_epochs": a.sparse_epochs, "finetune_epochs": a.finetune_epochs,
                    "sparse_lr": a.sparse_lr, "finetune_lr": a.finetune_lr, "reg": a.tp_reg,
                    "batch_size": a.batch_size, "channels_last": a.channels_last}


def schedule(jobs: dict[str, Job], a: argparse.Namespace, workdir: Path) -> None:
    """Run every job once its dependencies are done, ``a.jobs`` at a time."""
    run_jobs(jobs, list(ROWS), lambda job: job_call(job, a, jobs), a.jobs, workdir,
             report_only=a.report_only)


# -- measuring and reporting -----------------------------------------------------------------

def cpu_latency_b64(run_dir: Path) -> float:
    """Median CPU ms at batch 64 of the run's model (cached in the run directory)."""
    cache = run_dir / "bench_latency.json"
    stamp = (run_dir / "model.safetensors").stat().st_mtime_ns
    if cache.is_file():
        c = json.loads(cache.read_text())
        if c.get("stamp") == stamp:
            return c["ms"]
    import resprune
    from resprune.measure import latency

    model = resprune.load(run_dir)
    shape = tuple(read_summary(run_dir)["input_shape"])
    r = latency(model, shape, batch_sizes=(LATENCY_BATCH,), warmup=LATENCY_WARMUP,
                repeats=LATENCY_REPEATS)
    ms = round(r[LATENCY_BATCH]["median_ms"], 3)
    cache.write_text(json.dumps({"stamp": stamp, "ms": ms}))
    return ms


def collect(jobs: dict[str, Job], a: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Per row, one record per finished seed (latency measured here, one model at a time)."""
    import torch

    torch.set_num_threads(1)
    rows: dict[str, list[dict[str, Any]]] = {r: [] for r in ROWS}
    for s in a.seeds:
        for row in ROWS:
            job = jobs[f"seed{s}/{row}"]
            summary = read_summary(job.run_dir)
            if summary is None:
                continue
            is_base = row == "base"
            rows[row].append({
                "seed": s, "params": summary["params"], "macs": summary["macs"],
                "params_removed": 0.0 if is_base else summary["params_removed_pct"],
                "macs_removed": 0.0 if is_base else summary["macs_removed_pct"],
                "top1": summary.get("top1"), "val_top1": summary.get("val_top1"),
                "top1_after_sparse": summary.get("top1_after_sparse"),
                "top1_before_ft": summary.get("top1_before_finetune"),
                "epochs": summary.get("epochs"), "latency": cpu_latency_b64(job.run_dir),
                "ratio": summary.get("pruning_ratio"),
                "target_reached": (summary.get("prune") or {}).get("target_reached"),
            })
    return rows


def fmt_count(n: float) -> str:
    return f"{n / 1e6:.3f} M" if n >= 1e5 else f"{n / 1e3:.2f} k"


def table(rows: dict[str, list[dict[str, Any]]]) -> str:
    head = ["row", "seeds", "params removed %", "MACs removed %", "params", "MACs",
            "CPU latency b64 (ms)", "test top-1 % before fine-tuning", "test top-1 % after",
            "val top-1 % after", "epochs trained"]
    body = []
    for row, recs in rows.items():
        if not recs:
            body.append([ROWS[row], "0"] + ["-"] * (len(head) - 2))
            continue
        body.append([
            ROWS[row], str(len(recs)), mean_std([r["params_removed"] for r in recs]),
            mean_std([r["macs_removed"] for r in recs]),
            fmt_count(statistics.mean(r["params"] for r in recs)),
            fmt_count(statistics.mean(r["macs"] for r in recs)),
            mean_std([r["latency"] for r in recs], digits=1),
            "-" if row == "base" else mean_std([r["top1_before_ft"] for r in recs], 100),
            mean_std([r["top1"] for r in recs], 100),
            mean_std([r["val_top1"] for r in recs], 100),
            mean_std([r["epochs"] for r in recs], digits=1)])
    return md_table(head, body)


def detail_table(rows: dict[str, list[dict[str, Any]]]) -> str:
    head = ["row", "seed", "params removed %", "MACs removed %", "test top-1 % after sparsity "
            "training", "before fine-tuning", "after", "val top-1 % after", "tp channel ratio"]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    body = [[ROWS[row], r["seed"], f"{r['params_removed']:.2f}", f"{r['macs_removed']:.2f}",
             pct(r["top1_after_sparse"]), pct(r["top1_before_ft"]), pct(r["top1"]),
             pct(r["val_top1"]), "-" if r["ratio"] is None else f"{r['ratio']:.4f}"]
            for row, recs in rows.items() for r in recs]
    return md_table(head, body)


def write_results(path: Path, rows, jobs, a, argv, workdir: Path, wall: float) -> None:
    plots = []
    vacl0 = jobs.get(f"seed{a.seeds[0]}/moments")
    for png in ("group_rms.png", "widths.png"):
        if vacl0 is not None and (vacl0.run_dir / png).is_file():
            target = path.parent / f"{path.stem}_{png}"
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(vacl0.run_dir / png, target)
            plots.append(target.name)
    failed = [j.key for j in jobs.values() if j.status in ("failed", "blocked")]
    unreached = [f"seed{r['seed']}" for r in rows["moments"] + rows["lasso"]
                 if r["target_reached"] is False]
    base0 = read_summary(jobs[f"seed{a.seeds[0]}/base"].run_dir) or {}
    cmd = shlex.join([".venv/bin/python", "benchmarks/vacl_cifar10_mini.py", *argv])
    text = [
        f"# VACL on cifar10-mini: {a.model} (shortcut A) against torch-pruning\n",
        "Command (from the repository root):\n", f"```\n{cmd}\n```\n",
        baselines_line([jobs[f"seed{s}/base"].run_dir for s in a.seeds]),
        f"Machine: {machine_info(a.jobs, ('torch-pruning',))}. Wall time of this "
        f"invocation: {wall / 60:.1f} min "
        f"(runs already finished were reused). Work directory: `{workdir}`; baselines: "
        f"`{jobs[f'seed{a.seeds[0]}/base'].run_dir.parent}`.\n",
        f"Budget: baseline {base0.get('epochs', '?')} epoch(s) at lr "
        f"{(base0.get('config') or {}).get('lr', '?')}; every pruning row "
        f"{a.sparse_epochs} epoch(s) of sparsity training at lr {a.sparse_lr} + "
        f"{a.finetune_epochs} epoch(s) of fine-tuning at lr {a.finetune_lr} (the magnitude "
        f"row: {a.sparse_epochs + a.finetune_epochs} epochs of fine-tuning, no sparsity "
        f"training); batch {a.batch_size}, cosine schedule, weight decay 5e-4. VACL: lambda "
        f"{a.lam}, target params reduction {a.target_params_reduction}. torch-pruning: reg "
        f"{a.tp_reg}, GroupMagnitudeImportance(p=2), global pruning, channel ratio searched "
        f"to reach the VACL moments row's params reduction of the same seed. Seeds "
        f"{' '.join(map(str, a.seeds))}.\n",
        "Accuracies: test = the 1017 official test images in cifar10-mini, never used for a "
        "decision; val = the seeded 10 % split of the training images. CPU latency is the "
        f"median of {LATENCY_REPEATS} forward passes at batch {LATENCY_BATCH} after "
        f"{LATENCY_WARMUP} warm-up passes, one thread, measured after all training, one "
        "model at a time. Mean ± sample standard deviation over seeds. Epochs trained: the "
        "baseline's own training, for the other rows the epochs after the baseline.\n",
        table(rows),
        "Option-A shortcuts: torch-pruning alone cannot prune them (the pruned net fails "
        "with an index error); its rows use resprune's PadShortcut pruner and index-map "
        "coupling through torch-pruning's `customized_pruners` (see "
        "`benchmarks/_tp_baselines.py`).\n",
        "## Per seed\n", detail_table(rows),
    ]
    if unreached:
        text.append(f"VACL target not reached (a layer would have emptied): "
                    f"{', '.join(unreached)}.\n")
    if failed:
        text.append(f"Missing (failed or blocked; see {workdir}/logs): {', '.join(failed)}\n")
    for p in plots:
        text.append(f"![{p}]({p})\n")
    if plots:
        text.append(f"Plots: the VACL moments row of seed {a.seeds[0]} (group RMS norms "
                    "before and after sparsity training; per-layer widths).\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text), encoding="utf-8")


# -- main ------------------------------------------------------------------------------------

def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="plumbing check: resnet8, seed 0, 1 epoch per stage")
    p.add_argument("--model", default=None, help="CIFAR ResNet (default resnet56)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (0 1 2)")
    p.add_argument("--jobs", type=int, default=2, help="parallel worker processes (2)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing; write the results of the jobs already finished")
    p.add_argument("--base-runs", type=Path, default=None,
                   help="directory of trained baselines (base_s{seed}/ or seed{seed}/base/); "
                        "default: train them under runs/bench/vacl_cifar10_mini/bases/")
    p.add_argument("--base-epochs", type=int, default=None,
                   help="epochs of baselines this script trains (6)")
    p.add_argument("--base-lr", type=float, default=0.1, help="baseline learning rate (0.1)")
    p.add_argument("--base-warmup-epochs", type=float, default=None,
                   help="linear lr warm-up of baselines this script trains (2; smoke 0)")
    p.add_argument("--sparse-epochs", type=int, default=None,
                   help="sparsity-training epochs of every pruning row (3)")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help="fine-tuning epochs of every pruning row (2)")
    p.add_argument("--sparse-lr", type=float, default=0.01, help="(0.01)")
    p.add_argument("--finetune-lr", type=float, default=0.01, help="(0.01)")
    p.add_argument("--lam", type=float, default=2e-3, help="VACL lambda (2e-3)")
    p.add_argument("--target-params-reduction", type=float, default=0.5,
                   help="VACL target fraction of params to remove (0.5)")
    p.add_argument("--group-score", choices=GROUP_SCORES, default="layer_rms",
                   help="VACL's group ranking (layer_rms)")
    p.add_argument("--tp-reg", type=float, default=5e-4,
                   help="torch-pruning GroupNormPruner reg (5e-4)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="train in the default memory format (channels_last is faster on CPU)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--runs-root", type=Path, default=REPO / "runs" / "bench" / NAME,
                   help="where runs go (default runs/bench/vacl_cifar10_mini)")
    p.add_argument("--results", type=Path, default=None,
                   help=f"markdown file to write (default benchmarks/results/{NAME}.md; "
                        "smoke: inside the work directory)")
    a = p.parse_args(argv)
    real = {"model": "resnet56", "seeds": [0, 1, 2], "base_epochs": 6, "sparse_epochs": 3,
            "finetune_epochs": 2, "base_warmup_epochs": 2.0}
    smoke = {"model": "resnet8", "seeds": [0], "base_epochs": 1, "sparse_epochs": 1,
             "finetune_epochs": 1, "base_warmup_epochs": 0.0}
    for k, v in (smoke if a.smoke else real).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.jobs < 1:
        p.error("--jobs must be >= 1")
    for k in ("base_epochs", "sparse_epochs", "finetune_epochs"):
        if getattr(a, k) < 0:
            p.error(f"--{k.replace('_', '-')} must be >= 0")
    for k in ("lam", "tp_reg", "sparse_lr", "finetune_lr", "base_lr"):
        if not math.isfinite(getattr(a, k)) or getattr(a, k) < 0:
            p.error(f"--{k.replace('_', '-')} must be a number >= 0")
    if not 0 <= a.target_params_reduction < 1:
        p.error("--target-params-reduction must be in [0, 1)")
    if not (a.data_dir / "cifar-10-batches-py").is_dir():
        p.error(f"{a.data_dir} has no cifar-10-batches-py/ (cifar10-mini lives in "
                "../shared/datasets/cifar10-mini beside the repository)")
    a.data_dir = a.data_dir.resolve()
    a.runs_root = a.runs_root.resolve()
    if a.base_runs is not None:
        a.base_runs = a.base_runs.resolve()
    if a.results is None:
        a.results = None if a.smoke else RESULTS / f"{NAME}.md"
    return a


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    started = time.time()
    tag = budget_tag(a)
    if a.base_runs is not None:  # other baselines, other results: keep them apart
        tag = tag.replace(f"-b{a.base_epochs}-blr{a.base_lr:g}".replace(".", "p"), "")
        tag += "-bases" + hashlib.sha1(str(a.base_runs).encode()).hexdigest()[:8]
    workdir = a.runs_root / tag
    workdir.mkdir(parents=True, exist_ok=True)
    results = a.results or workdir / f"{NAME}_smoke.md"
    jobs = make_jobs(a, workdir)
    print(f"work directory {workdir}; {len(jobs)} jobs, {a.jobs} at a time", flush=True)
    schedule(jobs, a, workdir)
    print("measuring CPU latency of every finished run (one at a time) ...", flush=True)
    rows = collect(jobs, a)
    write_results(results, rows, jobs, a, argv, workdir, time.time() - started)
    print(table(rows))
    print(f"wrote {results} in {(time.time() - started) / 60:.1f} min", flush=True)
    return 1 if any(j.status in ("failed", "blocked") for j in jobs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
