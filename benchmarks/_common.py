"""Pieces shared by the cifar10-mini evidence benchmarks (implosion, VACL, compress).

Each benchmark plans *jobs* (one run directory per seed and row), runs the ones whose
dependencies are done in worker processes with one torch thread each, skips a job whose run
directory already has ``summary.json`` and resumes an interrupted one, then measures the
finished runs and writes a markdown table. What differs between the benchmarks (the rows,
their command lines, the tables) stays in the scripts; what is the same lives here:

- :func:`run_cli` / :func:`run_tp`: the worker-side calls (``resprune ARGV`` through
  ``resprune.cli.main.main``, or one torch-pruning baseline of ``_tp_baselines``), each with
  its output appended to the job's log file;
- :class:`Job` and :func:`schedule`: the dependency-ordered process pool;
- :func:`find_base`: the ``--base-runs`` lookup (``base_s{seed}/`` or ``seed{seed}/base/``);
- :func:`run_command`, :func:`baselines_line`: the command line that made a run (from its
  ``command.json``), and the baselines' provenance for a results file;
- :func:`deployed`: a run's model as deployed (priority gates folded into the BN);
- :func:`correct`: per-image hits, for paired accuracy differences;
- :func:`mean_std`, :func:`md_table`, :func:`machine_info`: report formatting.

Workers are spawned (not forked): they import this module again, found through ``sys.path``
which the spawn start method hands to the children.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import multiprocessing as mp
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "datasets" / "cifar10-mini"
RESULTS = REPO / "benchmarks" / "results"
# job states that stop the jobs depending on them
BAD_STATES = ("failed", "blocked", "missing")


# -- worker side -----------------------------------------------------------------------------

def init_worker() -> None:
    """Pool initializer: one torch thread per worker (``OMP_NUM_THREADS=1`` is inherited)."""
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def logged(log_path: str, title: str):
    """Append stdout and stderr of the block to ``log_path``, headed by ``$ title``."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        print(f"$ {title}", flush=True)
        yield


def run_cli(argv: list[str], log_path: str) -> int:
    """Run ``resprune ARGV`` in this (worker) process, its output in ``log_path``."""
    import torch

    torch.set_num_threads(1)
    from resprune.cli.main import main

    with logged(log_path, f"resprune {shlex.join(argv)}"):
        return main(argv)


def run_tp(kwargs: dict[str, Any], log_path: str) -> int:
    """One torch-pruning baseline (``_tp_baselines.run(**kwargs)``) in this worker process."""
    import torch

    torch.set_num_threads(1)
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import _tp_baselines

    with logged(log_path, f"_tp_baselines.run(**{kwargs!r})"):
        summary = _tp_baselines.run(**kwargs)
        print(json.dumps({k: summary[k] for k in ("params_removed_pct", "top1",
                                                  "pruning_ratio")}))
    return 0


def describe(fn: Callable, arg: Any) -> str:
    """How a job's call reads in the progress lines."""
    if fn is run_cli:
        return f"resprune {shlex.join(arg)}"
    if fn is run_tp:
        return f"_tp_baselines.run({arg})"
    return f"{getattr(fn, '__name__', fn)}({arg!r})"


# -- the plan --------------------------------------------------------------------------------

@dataclass
class Job:
    """One run of one row for one seed."""

    seed: int
    row: str
    run_dir: Path
    deps: list[str] = field(default_factory=list)  # row keys of the same seed
    # waiting, running, done, skipped (already done), failed, blocked, missing (a reused
    # run that is not there)
    status: str = "waiting"
    seconds: float = 0.0
    note: str = ""  # why a job is missing or blocked, for the results

    @property
    def key(self) -> str:
        return f"seed{self.seed}/{self.row}"


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _shown_path(path: str) -> str:
    """``path`` relative to the repository root when it lies in or beside it."""
    p = Path(path)
    for root, prefix in ((REPO, ""), (REPO.parent, "../")):
        with contextlib.suppress(ValueError):
            return prefix + str(p.relative_to(root))
    return path


def run_command(run_dir: Path) -> str | None:
    """``resprune COMMAND ...`` that made ``run_dir``, options that differ from the defaults.

    Paths in or beside the repository are shown relative to its root; ``--seed`` is always
    given; ``--out``, ``--resume`` and output-only flags are left out, so
    seeds differ only in ``--seed``. ``None`` when the run has no readable ``command.json``.
    """
    from resprune.cli.main import build_parser

    try:
        rec = json.loads((run_dir / "command.json").read_text())
        name, opts = rec["command"], rec["options"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[name]
    skip = {"out", "resume", "overwrite", "json", "no_progress", "config", "help"}
    argv = [name]
    for act in sub._actions:
        if act.dest in skip or act.dest not in opts or not act.option_strings:
            continue
        value = opts[act.dest]
        if value == act.default and act.dest != "seed":
            continue
        if isinstance(value, str) and value.startswith("/"):
            value = _shown_path(value)
        flag = max(act.option_strings, key=len)
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif f"--no-{flag[2:]}" in act.option_strings:
                argv.append(f"--no-{flag[2:]}")
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif value is not None:
            argv += [flag, str(value)]
    positional = [_shown_path(str(opts[a.dest])) for a in sub._actions if not a.option_strings
                  and a.dest in opts and a.dest not in skip]
    return shlex.join(["resprune", *argv[:1], *map(str, positional), *argv[1:]])


def baselines_line(base_dirs: Sequence[Path]) -> str:
    """One markdown paragraph: where the baselines are and the command that trained them."""
    cmds = {re.sub(r"--seed \d+", "--seed S", c) for d in base_dirs
            if (c := run_command(d)) is not None}
    where = ", ".join(f"`{_shown_path(str(d))}`" for d in base_dirs)
    if not cmds:
        return f"Baselines: {where} (no command.json).\n"
    shown = "; ".join(f"`{c}`" for c in sorted(cmds))
    return f"Baselines: {where}, trained by {shown}.\n"


def has_files(run_dir: Path) -> bool:
    """Whether a job already wrote something there (then it is continued with --resume)."""
    return run_dir.is_dir() and any(run_dir.iterdir())


def find_base(base_runs: Path, seed: int) -> Path:
    """The finished baseline of ``seed`` in ``base_runs``: ``base_s{seed}/`` or
    ``seed{seed}/base/`` (exits with a clear message when neither has ``summary.json``)."""
    cands = (base_runs / f"base_s{seed}", base_runs / f"seed{seed}" / "base")
    for cand in cands:
        if (cand / "summary.json").is_file():
            return cand
    started = [c for c in cands if has_files(c)]
    hint = (f" ({started[0]} is there but has no summary.json yet: still training?)"
            if started else "")
    raise SystemExit(f"--base-runs {base_runs}: no finished run base_s{seed}/ or "
                     f"seed{seed}/base/ in it{hint}; wait for it or leave seed {seed} out "
                     "with --seeds")


def schedule(jobs: dict[str, Job], order: Sequence[str],
             call: Callable[[Job], tuple[Callable, Any]], n_jobs: int, workdir: Path,
             report_only: bool = False) -> None:
    """Run every waiting job once its dependencies are done, ``n_jobs`` at a time.

    ``order``: the rows in start priority (rows others wait for first). ``call(job)`` gives
    ``(worker function, its first argument)``; it is asked only once the job's dependencies
    are done, so it may read their summaries. A job whose run directory already has
    ``summary.json`` is skipped; a job whose dependency failed (or is missing) is blocked.
    Logs: ``workdir/logs/seed{seed}-{row}.log``. ``report_only``: run nothing; unfinished
    jobs are reported as not run (for a table of what a time-limited session finished).
    """
    for job in jobs.values():
        if job.status == "waiting" and read_summary(job.run_dir) is not None:
            job.status = "skipped"
        elif job.status == "waiting" and report_only:
            job.status, job.note = "blocked", "not run (--report-only)"
    if report_only:
        return
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # for the workers
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx,
                                initializer=init_worker) as pool:
        running: dict[cf.Future, tuple[Job, float]] = {}
        while True:
            for job in sorted(jobs.values(), key=lambda j: (order.index(j.row), j.seed)):
                if job.status != "waiting" or len(running) >= n_jobs:
                    continue
                dep_states = [jobs[f"seed{job.seed}/{d}"].status for d in job.deps]
                if any(s in BAD_STATES for s in dep_states):
                    job.status, job.note = "blocked", "a job it needs failed"
                    print(f"[blocked] {job.key}: {job.note}", flush=True)
                elif all(s in ("done", "skipped") for s in dep_states):
                    fn, arg = call(job)
                    log = workdir / "logs" / f"seed{job.seed}-{job.row}.log"
                    print(f"[start] {job.key}: {describe(fn, arg)}", flush=True)
                    running[pool.submit(fn, arg, str(log))] = (job, time.time())
                    job.status = "running"
            if not running:
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                job, t0 = running.pop(fut)
                job.seconds = time.time() - t0
                log = workdir / "logs" / f"seed{job.seed}-{job.row}.log"
                try:
                    code = fut.result()
                except Exception:  # noqa: BLE001 - report and carry on with other jobs
                    code = -1
                    with open(log, "a", encoding="utf-8") as f:
                        f.write(traceback.format_exc())
                ok = code == 0 and read_summary(job.run_dir) is not None
                job.status = "done" if ok else "failed"
                job.note = "" if ok else f"exit {code}, see {log}"
                print(f"[{job.status}] {job.key} in {job.seconds:.0f} s"
                      + ("" if ok else f" (exit {code}; see {log})"), flush=True)


# -- measuring and reporting -----------------------------------------------------------------

def deployed(run_dir: Path):
    """The run's model with its priority gates folded (as deployed) and its input shape."""
    import resprune
    from resprune.implosion import fold_gates

    model = resprune.load(run_dir)
    fold_gates(model)
    return model, tuple(read_summary(run_dir)["input_shape"])


def correct(model, loader) -> Any:
    """Per-image hits (1.0 / 0.0, float64) of ``model`` on ``loader``, in order: the paired
    differences between two models are the difference of their hits."""
    import torch

    model.eval()
    hits = []
    with torch.inference_mode():
        for x, y in loader:
            hits.append((model(x).argmax(1) == y).double())
    return torch.cat(hits)


def mean_std(xs: Iterable[float | None], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± sample std`` of the values that are not None (one value: just it)."""
    vals = [scale * x for x in xs if x is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def md_table(head: list[str], body: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in body]) + "\n"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def machine_info(n_jobs: int, packages: Sequence[str] = ()) -> str:
    """One line: OS, CPU model and count, load, Python, torch (+ ``packages``), workers,
    resprune commit."""
    import importlib.metadata

    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    versions = "".join(f", {p} {importlib.metadata.version(p)}" for p in packages)
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs "
            f"(load average {load[0]:.2f} at the end); Python {platform.python_version()}, "
            f"torch {torch.__version__}{versions}; {n_jobs} worker "
            f"process{'' if n_jobs == 1 else 'es'} x 1 "
            f"torch thread; resprune commit {commit}")


def measure_runs(run_dirs: Sequence[Path], timing: dict[int, tuple[int, int]]
                 ) -> dict[Path, dict[str, Any]]:
    """params / MACs / depth (``resprune.measure.sizes``) of each run's deployed net and its
    CPU ms per batch size (``ms<batch>``).

    ``timing`` maps batch size -> (warm-up, repeats). Latency is timed once per distinct
    architecture (it does not depend on the weights), all of them interleaved in one
    ``resprune.measure.compare.time_models`` call per batch size, eager, one thread.
    """
    import json

    import torch

    from resprune.measure import sizes
    from resprune.measure.compare import time_models
    from resprune.models import spec_of

    torch.set_num_threads(1)
    out, arch_of, nets, shapes = {}, {}, {}, set()
    for d in run_dirs:
        model, shape = deployed(d)
        out[d] = sizes(model, shape)
        arch_of[d] = json.dumps(spec_of(model), sort_keys=True)
        nets.setdefault(arch_of[d], model)
        shapes.add(shape)
    if len(shapes) != 1:  # one dataset: only if runs were mixed by hand
        raise SystemExit(f"expected runs of one input shape, got {sorted(shapes)}")
    shape = shapes.pop()
    for bs, (warmup, repeats) in timing.items():
        rows, _ = time_models(nets, shape, batch_sizes=(bs,), runtimes=("eager",),
                              devices=["cpu"], warmup=warmup, repeats=repeats)
        for d in run_dirs:
            out[d][f"ms{bs}"] = rows[0]["ms"][arch_of[d]]
    return out

