"""Evidence for Network Implosion on real images: ResNet-56 (shortcut A) on cifar10-mini.

Every number comes from the real command line (``resprune train`` / ``resprune implode``,
called in worker processes through ``resprune.cli.main.main``). Per seed (default 0 1 2):

- baseline: ``resprune train --model resnet56 --priority-gates`` for ``--base-epochs``;
- implosion with each score (gate, norm, gate_bn): ``resprune implode BASE --score S``;
- random units at the same depth: ``implode --score random --target-depth D --tolerance 100``
  (D: the gate row's final depth, reached whatever the accuracy);
- with ``--also-tolerance T``: the gate score accepting steps that lose at most T points of
  validation top-1 (a 407-image validation split moves by 0.25 points an image, so tolerance 0
  rejects steps on noise);
- no retraining: ``implode --score gate --retrain-epochs 0 --final-epochs 0``;
- from scratch: ``resprune train --arch GATE/arch.json``, the gate row's final architecture
  from a fresh initialisation, for base epochs + the loop's epochs (``--scratch-budget
  total``: all the training the imploded net received) or for the loop's epochs only
  (``loop``).

The baseline (with ``--base-warmup-epochs`` of linear warm-up) is trained with priority gates
(the priority term learns with the network, so ``implode`` needs no adaptation; the 25 scalar
gates are folded away for the table). Every implosion row uses the same budget
(``--retrain-epochs``, ``--per-step``, ``--max-steps``, ``--final-epochs``, ``--tolerance``)
and the same validation split as its baseline (implode inherits the run's data options); the
test set is only reported.

Jobs that do not depend on each other run in ``--jobs`` worker processes (default 2), each
with one torch thread (``OMP_NUM_THREADS=1`` + ``torch.set_num_threads(1)``). One baseline
per seed serves every row. A job whose run directory already has ``summary.json`` is skipped
and an interrupted one is resumed (``--resume``), so the script can be re-run to fill gaps;
the work directory's name encodes the budget, so a different budget never mixes with old
runs. CPU latency (batch 64, one thread) is measured at the end, after every job, once per
distinct architecture (it does not depend on the weight values), all of them interleaved
(``resprune.measure.compare.time_models``: each round times every net once, alternating the
order), so that a burst of load from other processes does not land on one row only.

Cost (calibrated on the shared 2-core machine, one thread per process): one ResNet-56 epoch
over cifar10-mini's 3661 training images (+ 407 validation) takes 40-55 s of CPU with
channels_last (55-65 s without), 60-90 s of wall time when other processes compete.
Erasing a unit of ResNet-56 saves ~3.7 % of its MACs, so a net with 12 of 27 units erased
trains ~1.8x faster. The default budget per seed is about 22 full-epoch equivalents: baseline
6, each of the four looping implosion rows 3 retrains of 1 epoch (at 4, 8, 12 units erased) +
1 final ~ 2.7, scratch 10 epochs of the 32-layer net ~ 5.6. Three seeds on two idle cores:
~23-27 minutes (add the latency pass, ~1 minute); expect up to twice that on a busy machine.
This budget is far below a converged ResNet-56 (hundreds of epochs): it compares the rows
with one another under equal budgets, not with published full-data numbers.

    .venv/bin/python benchmarks/implosion_cifar10_mini.py              # ~25 min, 3 seeds
    .venv/bin/python benchmarks/implosion_cifar10_mini.py --smoke      # ~4 min plumbing check
    .venv/bin/python benchmarks/implosion_cifar10_mini.py --base-epochs 30 --retrain-epochs 3

Writes ``benchmarks/results/implosion_cifar10_mini.md`` (tables, the exact command line,
machine info) and copies seed 0's gate-row plots next to it. ``--smoke`` (ResNet-14, one seed,
one-epoch trainings, two steps, every step accepted) writes its table into the work directory
only, never into benchmarks/results.
"""

from __future__ import annotations

import argparse
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
    machine_info,
    mean_std,
    measure_runs,
    plural,
    read_summary,
    run_cli,
)
from _common import schedule as run_jobs

NAME = "implosion_cifar10_mini"
SCORES = ("gate", "norm", "gate_bn")
ROWS = {  # row key -> label, in table order
    "base": "baseline (trained with priority gates)",
    "gate": "implosion, score gate",
    "norm": "implosion, score norm",
    "gate_bn": "implosion, score gate_bn",
    "random": "random units, same depth as gate",
    "noretrain": "implosion gate, no retraining",
    "scratch": "gate architecture, from scratch",
}
LATENCY_BATCH, LATENCY_WARMUP, LATENCY_REPEATS = 64, 1, 7
DEPS = {"base": [], "gate": ["base"], "norm": ["base"], "gate_bn": ["base"],
        "gate_tol": ["base"], "noretrain": ["base"], "random": ["base", "gate"],
        "scratch": ["gate"]}


def rows_of(a: argparse.Namespace) -> dict[str, str]:
    """The rows of this invocation (``--also-tolerance`` adds one), key -> label, in order."""
    rows = dict(ROWS)
    if a.also_tolerance is not None:
        items = list(rows.items())
        at = list(rows).index("gate_bn") + 1
        items.insert(at, ("gate_tol", f"implosion, score gate, tolerance {a.also_tolerance:g}"))
        rows = dict(items)
    return rows


# -- the plan --------------------------------------------------------------------------------

def budget_tag(a: argparse.Namespace) -> str:
    tol = f"{a.tolerance:g}".replace(".", "p")
    warm = f"w{a.base_warmup_epochs:g}".replace(".", "p") if a.base_warmup_epochs else ""
    return (f"{a.model}-b{a.base_epochs}{warm}-r{a.retrain_epochs}-k{a.per_step}-s{a.max_steps}"
            f"-f{a.final_epochs}-t{tol}-{a.scratch_budget}")


def make_jobs(a: argparse.Namespace, workdir: Path) -> dict[str, Job]:
    jobs = {}
    for s in a.seeds:
        d = workdir / f"seed{s}"
        for row in rows_of(a):
            job = Job(s, row, d / row, DEPS[row])
            jobs[job.key] = job
    return jobs


def job_argv(job: Job, a: argparse.Namespace, workdir: Path) -> list[str]:
    """The command line of a job."""
    seed_dir = workdir / f"seed{job.seed}"
    common = ["--no-progress", "--batch-size", str(a.batch_size), "--out", str(job.run_dir)]
    if a.channels_last:
        common.append("--channels-last")
    if job.run_dir.is_dir() and any(job.run_dir.iterdir()):
        common.append("--resume")  # an interrupted job continues where it stopped
    train = ["train", "--data", "cifar10", "--data-dir", str(a.data_dir), "--seed",
             str(job.seed), "--lr", str(a.lr), "--warmup-epochs", str(a.base_warmup_epochs)]
    if job.row == "base":
        return [*train, "--model", a.model, "--priority-gates", "--epochs",
                str(a.base_epochs), *common]
    if job.row == "scratch":  # the gate row's final architecture, freshly initialised
        gate = read_summary(seed_dir / "gate")
        epochs = gate["epochs"] + (a.base_epochs if a.scratch_budget == "total" else 0)
        return [*train, "--arch", str(seed_dir / "gate" / "arch.json"), "--epochs",
                str(max(epochs, 1)), *common]
    loop = ["implode", str(seed_dir / "base"), "--retrain-epochs", str(a.retrain_epochs),
            "--retrain-lr", str(a.retrain_lr), "--per-step", str(a.per_step),
            "--final-epochs", str(a.final_epochs), "--tolerance", str(a.tolerance)]
    steps = ["--max-steps", str(a.max_steps)]
    if job.row in SCORES:
        return [*loop, "--score", job.row, *steps, *common]
    if job.row == "gate_tol":
        loop[loop.index("--tolerance") + 1] = str(a.also_tolerance)
        return [*loop, "--score", "gate", *steps, *common]
    if job.row == "noretrain":
        loop[loop.index("--retrain-epochs") + 1] = "0"
        loop[loop.index("--final-epochs") + 1] = "0"
        return [*loop, "--score", "gate", *steps, *common]
    # random: the gate row's final depth, whatever the accuracy
    depth = read_summary(seed_dir / "gate")["depth"]
    loop[loop.index("--tolerance") + 1] = "100"
    return [*loop, "--score", "random", "--target-depth", str(depth), *common]


def schedule(jobs: dict[str, Job], a: argparse.Namespace, workdir: Path) -> None:
    """Run every job once its dependencies are done, ``a.jobs`` at a time."""
    # bases first, then the gate rows others wait for
    run_jobs(jobs, list(rows_of(a)), lambda job: (run_cli, job_argv(job, a, workdir)), a.jobs,
             workdir, report_only=a.report_only)


# -- measuring and reporting -----------------------------------------------------------------

def measure(run_dirs: list[Path]) -> dict[Path, dict[str, Any]]:
    """params / MACs / depth of each run's deployed net, and its CPU latency at batch 64
    (``benchmarks._common.measure_runs``: interleaved, once per distinct architecture)."""
    out = measure_runs(run_dirs, {LATENCY_BATCH: (LATENCY_WARMUP, LATENCY_REPEATS)})
    for m in out.values():
        m["latency"] = round(m.pop(f"ms{LATENCY_BATCH}"), 3)
    return out


def collect(jobs: dict[str, Job], a: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Per row, one record per finished seed (measured here, after all training)."""
    import torch

    torch.set_num_threads(1)
    done = [j for j in jobs.values() if read_summary(j.run_dir) is not None]
    measured = measure([j.run_dir for j in done])
    rows: dict[str, list[dict[str, Any]]] = {r: [] for r in rows_of(a)}
    for job in sorted(done, key=lambda j: j.seed):
        base = jobs[f"seed{job.seed}/base"].run_dir
        if base not in measured:
            continue
        summary, m = read_summary(job.run_dir), measured[job.run_dir]
        rows[job.row].append({
            "seed": job.seed, **m, "top1": summary.get("top1"),
            "val_top1": summary.get("val_top1"), "epochs": summary.get("epochs"),
            "removed_pct": 100.0 * (measured[base]["depth"] - m["depth"])
            / measured[base]["depth"],
            "erased": [e["name"] for e in summary.get("erased_units", [])],
            "stop": summary.get("stop_reason"), "seconds": summary.get("seconds"),
        })
    return rows


def table(rows: dict[str, list[dict[str, Any]]], labels: dict[str, str]) -> str:
    from resprune.report import fmt_count

    head = ["row", "seeds", "weight layers removed %", "depth", "params", "MACs",
            "CPU latency b64 (ms)", "test top-1 % (mean ± std)", "val top-1 % (mean ± std)",
            "epochs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, recs in rows.items():
        if not recs:
            lines.append(f"| {labels[row]} | 0 | " + " | ".join("-" for _ in head[2:]) + " |")
            continue
        lines.append("| " + " | ".join([
            labels[row], str(len(recs)), mean_std([r["removed_pct"] for r in recs]),
            mean_std([r["depth"] for r in recs], digits=1),
            fmt_count(statistics.mean(r["params"] for r in recs)),
            fmt_count(statistics.mean(r["macs"] for r in recs)),
            mean_std([r["latency"] for r in recs], digits=1),
            mean_std([r["top1"] for r in recs], 100), mean_std([r["val_top1"] for r in recs], 100),
            mean_std([r["epochs"] for r in recs], digits=1)]) + " |")
    return "\n".join(lines) + "\n"


def detail_table(rows: dict[str, list[dict[str, Any]]], labels: dict[str, str]) -> str:
    head = ["row", "seed", "depth", "test top-1 %", "val top-1 %", "epochs", "stop",
            "erased units (in order)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, recs in rows.items():
        for r in recs:
            pct = ["-" if r[k] is None else f"{100 * r[k]:.2f}" for k in ("top1", "val_top1")]
            lines.append(f"| {labels[row]} | {r['seed']} | {r['depth']} | {pct[0]} | {pct[1]} | "
                         f"{r['epochs']} | {r['stop'] or '-'} | {', '.join(r['erased']) or '-'} |")
    return "\n".join(lines) + "\n"


def write_results(path: Path, rows, jobs, a, argv, workdir: Path, wall: float) -> None:
    plots = []
    gate0 = jobs.get(f"seed{a.seeds[0]}/gate")
    for png in ("priorities.png", "accuracy_vs_depth.png"):
        if gate0 is not None and (gate0.run_dir / png).is_file():
            target = path.parent / f"{path.stem}_{png}"
            shutil.copyfile(gate0.run_dir / png, target)
            plots.append(target.name)
    failed = [j.key for j in jobs.values() if j.status in ("failed", "blocked")]
    cmd = shlex.join([".venv/bin/python", "benchmarks/implosion_cifar10_mini.py", *argv])
    text = [
        f"# Network Implosion on cifar10-mini: {a.model} (shortcut A)\n",
        "Command (from the repository root):\n", f"```\n{cmd}\n```\n",
        baselines_line([jobs[f"seed{s}/base"].run_dir for s in a.seeds]),
        f"Machine: {machine_info(a.jobs)}. Wall time of this invocation: {wall / 60:.1f} min "
        f"(runs already finished were reused). Work directory: `{workdir}`.\n",
        f"Budget: baseline {plural(a.base_epochs, 'epoch')} (lr {a.lr}, "
        f"{a.base_warmup_epochs:g} warm-up epochs, cosine, batch {a.batch_size}); each "
        f"implosion erases {plural(a.per_step, 'unit')} per step for at most "
        f"{plural(a.max_steps, 'step')}, retrains {plural(a.retrain_epochs, 'epoch')} at "
        f"lr {a.retrain_lr} after each, then {plural(a.final_epochs, 'final epoch')}; "
        f"tolerance {a.tolerance:g} percentage points of validation "
        f"top-1; scratch budget `{a.scratch_budget}`. Seeds {' '.join(map(str, a.seeds))}.\n",
        "Accuracies: test = the official test images in cifar10-mini (1017), never used for "
        "a decision; val = the seeded 10 % split of the training images every acceptance "
        "decision uses. Params / MACs / depth are of the deployed net (gates folded). CPU "
        f"latency: one forward pass at batch {LATENCY_BATCH}, one thread, timed after all "
        "training, once per distinct architecture, all architectures interleaved (each "
        f"round times every net once, alternating the order): median of {LATENCY_REPEATS} "
        "runs. "
        "Mean ± sample standard deviation over seeds.\n",
        table(rows, rows_of(a)),
        "## Per seed\n", detail_table(rows, rows_of(a)),
    ]
    if failed:
        text.append(f"Missing (failed or blocked; see {workdir}/logs): {', '.join(failed)}\n")
    for p in plots:
        text.append(f"![{p}]({p})\n")
    if plots:
        text.append(f"Plots: the gate row of seed {a.seeds[0]}.\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text), encoding="utf-8")


# -- main ------------------------------------------------------------------------------------

def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="plumbing check: resnet14, seed 0, 1 epoch everywhere, 2 steps, "
                        "tolerance 100")
    p.add_argument("--model", default=None, help="CIFAR ResNet (default resnet56)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (0 1 2)")
    p.add_argument("--jobs", type=int, default=2, help="parallel worker processes (2)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing; write the results of the jobs already finished")
    p.add_argument("--base-epochs", type=int, default=None, help="baseline epochs (6)")
    p.add_argument("--retrain-epochs", type=int, default=None,
                   help="retraining epochs after each erasure (1)")
    p.add_argument("--per-step", type=int, default=None, help="units erased per step (4)")
    p.add_argument("--max-steps", type=int, default=None, help="at most this many steps (3)")
    p.add_argument("--final-epochs", type=int, default=None, help="final retraining epochs (1)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="percentage points of val top-1 a step may lose (0)")
    p.add_argument("--also-tolerance", type=float, default=None, metavar="T",
                   help="add a row: the gate score with --tolerance T (percentage points)")
    p.add_argument("--lr", type=float, default=0.1, help="baseline learning rate (0.1)")
    p.add_argument("--base-warmup-epochs", type=float, default=None,
                   help="linear lr warm-up of the baseline and scratch rows (2; smoke 0)")
    p.add_argument("--retrain-lr", type=float, default=0.01, help="retraining lr (0.01)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--scratch-budget", choices=["total", "loop"], default="total",
                   help="scratch row epochs: base + loop epochs (total) or the loop's only")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="train in the default memory format (channels_last is ~25 %% faster)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where runs go (default runs/bench/implosion_cifar10_mini/<budget>)")
    p.add_argument("--results", type=Path, default=None,
                   help=f"markdown file to write (default benchmarks/results/{NAME}.md; "
                        "smoke: inside the work directory)")
    a = p.parse_args(argv)
    real = {"model": "resnet56", "seeds": [0, 1, 2], "base_epochs": 6, "retrain_epochs": 1,
            "per_step": 4, "max_steps": 3, "final_epochs": 1, "tolerance": 0.0,
            "base_warmup_epochs": 2.0}
    # smoke: every step accepted, so the random and scratch rows get a pruned architecture
    smoke = {"model": "resnet14", "seeds": [0], "base_epochs": 1, "retrain_epochs": 1,
             "per_step": 1, "max_steps": 2, "final_epochs": 0, "tolerance": 100.0,
             "base_warmup_epochs": 0.0}
    for k, v in (smoke if a.smoke else real).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    for k in ("jobs", "per_step", "max_steps"):
        if getattr(a, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    for k in ("base_epochs", "retrain_epochs", "final_epochs"):
        if getattr(a, k) < 0:
            p.error(f"--{k.replace('_', '-')} must be >= 0")
    for k in ("tolerance", "also_tolerance"):
        t = getattr(a, k)
        if t is not None and (not math.isfinite(t) or t < 0):
            p.error(f"--{k.replace('_', '-')} must be >= 0")
    if not (a.data_dir / "cifar-10-batches-py").is_dir():
        p.error(f"{a.data_dir} has no cifar-10-batches-py/ (cifar10-mini lives in "
                "../shared/datasets/cifar10-mini beside the repository)")
    if a.workdir is None:
        a.workdir = REPO / "runs" / "bench" / NAME / (("smoke-" if a.smoke else "")
                                                      + budget_tag(a))
    if a.results is None:
        a.results = (a.workdir / f"{NAME}_smoke.md" if a.smoke else RESULTS / f"{NAME}.md")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    started = time.time()
    workdir = a.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs(a, workdir)
    print(f"work directory {workdir}; {len(jobs)} jobs, {a.jobs} at a time", flush=True)
    schedule(jobs, a, workdir)
    print("measuring the finished runs (latency once per architecture) ...", flush=True)
    rows = collect(jobs, a)
    write_results(a.results, rows, jobs, a, argv, workdir, time.time() - started)
    print(table(rows, rows_of(a)))
    print(f"wrote {a.results} in {(time.time() - started) / 60:.1f} min", flush=True)
    return 1 if any(j.status in ("failed", "blocked") for j in jobs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
