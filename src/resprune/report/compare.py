"""Results across runs: one table and one accuracy-vs-cost plot from many ``summary.json``.

:func:`find_runs` turns the directories a user names into run directories (a directory with
``summary.json`` is a run; any other directory is searched one level down), :func:`collect`
reads their summaries into :class:`RunRow` records, :func:`pareto_front` picks the runs no
other run beats on both cost and accuracy, and :func:`table_rows` / :func:`markdown` /
:func:`plot` present them. Accuracies stay fractions in the records and become percent in
every table and plot.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import read_json
from ..runs import SUMMARY_FILE, is_run, read_summary
from .tables import fmt_acc, fmt_count, fmt_pct, markdown_table, pct_removed

HEADERS = ["run", "kind", "model", "params", "MACs", "depth", "val top-1", "test top-1",
           "params removed", "MACs removed"]
# summary keys that may hold the model a pruning run started from ({"params", "macs", ...})
REFERENCE_KEYS = ("base", "initial", "baseline")


@dataclass
class RunRow:
    """One run's numbers as read from its summary (accuracies as fractions)."""

    label: str
    path: str
    kind: str | None
    model: str | None
    params: float | None
    macs: float | None
    depth: int | None
    val_top1: float | None
    top1: float | None
    params_removed_pct: float | None = None
    macs_removed_pct: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_runs(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Run directories under ``paths``, and the unfinished runs skipped on the way.

    A path holding ``summary.json`` is a run. Any other directory is searched one level down
    (in name order) for run directories; its subdirectories that look like unfinished runs
    (a model or state but no ``summary.json``) are returned as skipped. Raises
    :class:`UserError` for a path that is not a directory, an unfinished run named directly,
    a directory with no run in it or below it, and when no run is found at all.
    """
    if not paths:
        raise UserError("no run directory given; pass run directories or their parent")
    found: list[Path] = []
    skipped: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            raise UserError(f"{p} is not a directory; pass run directories or their parent")
        if (p / SUMMARY_FILE).is_file():
            found.append(p)
            continue
        if is_run(p):
            raise UserError(f"{p} is not a finished resprune run (no {SUMMARY_FILE}); finish "
                            "or resume it first, or leave it out")
        children = sorted(c for c in p.iterdir() if c.is_dir())
        runs = [c for c in children if (c / SUMMARY_FILE).is_file()]
        if not runs:
            raise UserError(f"{p} has no {SUMMARY_FILE}, nor does any directory directly in "
                            "it; pass run directories written by resprune commands")
        found += runs
        skipped += [c for c in children if c not in runs and is_run(c)]
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values()), skipped


def labels_for(paths: Sequence[Path]) -> list[str]:
    """Shortest distinct trailing parts of each path ('base', or 'exp1/base' on a clash)."""
    parts = [p.resolve().parts for p in paths]
    n = 1
    while True:
        labels = ["/".join(ps[-n:]) for ps in parts]
        if len(set(labels)) == len(labels) or n >= max(len(ps) for ps in parts):
            return labels
        n += 1


def _number(summary_path: Path, summary: dict[str, Any], key: str,
            fraction: bool = False) -> float | None:
    v = summary.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise UserError(f"{summary_path}: {key} must be a number, got {v!r}; the file is "
                        "corrupt")
    if fraction and not 0 <= v <= 1:
        raise UserError(f"{summary_path}: {key} must be a fraction in [0, 1], got {v!r} "
                        "(accuracies are stored as fractions, not percent)")
    return v


def _reference(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The numbers of the model a pruning run started from, when its summary says.

    Looked up in order: a ``base``, ``initial`` or ``baseline`` object in the summary with
    ``params``/``macs``; else the summary of the input run recorded as ``config.run`` (a
    path, tried as given and relative to the run's parent directory).
    """
    for key in REFERENCE_KEYS:
        ref = summary.get(key)
        if isinstance(ref, dict) and ("params" in ref or "macs" in ref):
            return ref
    config = summary.get("config")
    source = config.get("run") if isinstance(config, dict) else None
    if isinstance(source, str) and source:
        for cand in (Path(source), run_dir.parent / source):
            if (cand / SUMMARY_FILE).is_file() and cand.resolve() != run_dir.resolve():
                ref = read_json(cand / SUMMARY_FILE, "summary file")
                return ref if isinstance(ref, dict) else None
    return None


def _removed(before: Any, after: float | None) -> float | None:
    if after is None or isinstance(before, bool) or not isinstance(before, (int, float)) \
            or before <= 0:
        return None
    return pct_removed(before, after)


def collect(paths: Sequence[str | os.PathLike]) -> tuple[list[RunRow], list[Path]]:
    """Read every run under ``paths`` (see :func:`find_runs`): ``(rows, skipped)``.

    ``params_removed_pct`` / ``macs_removed_pct`` compare a pruning run with the model it
    started from: the summary's own ``params_removed_pct`` / ``macs_removed_pct`` when it
    has them (``resprune implode`` writes them), else computed from the start model found by
    :func:`_reference`; ``None`` for training runs and for runs whose summary says neither.
    """
    dirs, skipped = find_runs(paths)
    rows = []
    for run_dir, label in zip(dirs, labels_for(dirs)):
        s = read_summary(run_dir)
        where = run_dir / SUMMARY_FILE
        depth = _number(where, s, "depth")
        row = RunRow(label=label, path=str(run_dir), kind=s.get("kind"), model=s.get("model"),
                     params=_number(where, s, "params"), macs=_number(where, s, "macs"),
                     depth=None if depth is None else int(depth),
                     val_top1=_number(where, s, "val_top1", fraction=True),
                     top1=_number(where, s, "top1", fraction=True))
        ref = _reference(run_dir, s) if row.kind != "train" else None
        if ref is not None:
            row.params_removed_pct = _removed(ref.get("params"), row.params)
            row.macs_removed_pct = _removed(ref.get("macs"), row.macs)
        for key in ("params_removed_pct", "macs_removed_pct"):  # the run's own word wins
            if s.get(key) is not None:
                setattr(row, key, _number(where, s, key))
        rows.append(row)
    return rows, skipped


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, by increasing cost.

    Points are ``(cost, accuracy)``: lower cost and higher accuracy are better. ``q``
    dominates ``p`` when it is at least as good on both and strictly better on one, so two
    identical points are both on the front.
    """
    front = []
    for i, (x, y) in enumerate(points):
        if not any((qx <= x and qy >= y) and (qx < x or qy > y) for qx, qy in points):
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def fronts(rows: Sequence[RunRow]) -> dict[str, list[str]]:
    """Labels on the test top-1 Pareto front against params and against MACs."""
    out = {}
    for cost in ("params", "macs"):
        usable = [r for r in rows if getattr(r, cost) is not None and r.top1 is not None]
        idx = pareto_front([(getattr(r, cost), r.top1) for r in usable])
        out[cost] = [usable[i].label for i in idx]
    return out


def table_rows(rows: Sequence[RunRow]) -> list[list[Any]]:
    """Rows for :data:`HEADERS`, formatted for people (percent, k/M/G)."""
    return [[r.label, r.kind or "-", r.model or "-", fmt_count(r.params), fmt_count(r.macs),
             "-" if r.depth is None else r.depth, fmt_acc(r.val_top1), fmt_acc(r.top1),
             fmt_pct(r.params_removed_pct), fmt_pct(r.macs_removed_pct)] for r in rows]


def markdown(rows: Sequence[RunRow], plot_name: str | None = None) -> str:
    """A report.md-style page: the table, the Pareto fronts and the plot (if any)."""
    front = fronts(rows)
    lines = ["# Results across runs\n", markdown_table(HEADERS, table_rows(rows)),
             "Accuracies in percent; MACs are multiply-accumulates of conv and linear layers "
             "for one image. \"removed\" compares a pruning run with the model it started "
             "from.\n",
             "Pareto front of test top-1 (no other run is both cheaper and more accurate):\n",
             f"- against params: {', '.join(front['params']) or '-'}",
             f"- against MACs: {', '.join(front['macs']) or '-'}\n"]
    if plot_name:
        lines.append(f"![test top-1 vs params and MACs]({plot_name})\n")
    return "\n".join(lines)


def _tick(value: float, _pos: object = None) -> str:
    """Compact log-axis tick: 200000 -> '200k', 2e7 -> '20M'."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:g}{unit}"
    return f"{value:g}"


def plot(rows: Sequence[RunRow], path: str | os.PathLike) -> None:
    """Two panels, test top-1 (%) vs params and vs MACs (log x), Pareto fronts drawn.

    Training runs (the baselines) are black stars, other kinds coloured circles; each point
    is labelled with its run. Runs without test top-1 or without the cost are left out.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from .plots import plt, save_figure

    kinds = sorted({r.kind or "?" for r in rows if r.kind != "train"})
    colors = {k: f"C{i % 10}" for i, k in enumerate(kinds)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, cost, name in ((axes[0], "params", "params"), (axes[1], "macs", "MACs")):
        usable = [r for r in rows if getattr(r, cost) is not None and r.top1 is not None]
        pts = [(getattr(r, cost), 100 * r.top1) for r in usable]
        idx = pareto_front(pts)
        if len(idx) > 1:
            ax.plot([pts[i][0] for i in idx], [pts[i][1] for i in idx], color="0.5",
                    drawstyle="steps-post", linestyle="--", linewidth=1, label="Pareto front",
                    zorder=1)
        seen: set[str] = set()
        for r, (x, y) in zip(usable, pts):
            kind = r.kind or "?"
            legend = None if kind in seen else ("baseline (train)" if kind == "train" else kind)
            seen.add(kind)
            if kind == "train":
                ax.scatter([x], [y], marker="*", s=160, color="black", label=legend, zorder=3)
            else:
                ax.scatter([x], [y], marker="o", s=40, color=colors[kind], label=legend,
                           zorder=3)
            ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
        for i in idx:
            ax.scatter([pts[i][0]], [pts[i][1]], s=110, facecolors="none", edgecolors="0.3",
                       linewidths=1, zorder=2)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(_tick))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{name} (log scale)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"test top-1 vs {name}")
        ax.grid(True, which="both", alpha=0.3)
        if usable:
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.text(0.5, 0.5, "no run has both test top-1 and " + name,
                    transform=ax.transAxes, ha="center")
    save_figure(fig, path)
