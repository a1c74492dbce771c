"""``resprune report``: one table (and plot) of many runs' summaries."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UserError
from . import options


def add_parser(subs) -> None:
    p = subs.add_parser(
        "report", help="compare finished runs: table, Pareto front, accuracy-vs-cost plot",
        description="Read summary.json of every run directory given (a directory without "
                    "one is searched one level down for runs), print a table of params, MACs, "
                    "depth, validation and test top-1 and the share of params/MACs each "
                    "pruning run removed, and optionally write it as Markdown and plot test "
                    "top-1 against params and MACs with the Pareto front.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories or their parents")
    p.add_argument("--out", metavar="FILE.md",
                   help="write the table as Markdown (with the plot beside it as FILE.png "
                        "unless --plot names another file)")
    p.add_argument("--plot", metavar="FILE.png", help="write the two-panel plot here")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    options.add_config(p)
    p.set_defaults(func=run)


def _target(path: str, option: str, suffix: str | None = None) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{option} {p} is a directory; give a file name")
    if suffix and p.suffix.lower() != suffix:
        raise UserError(f"{option} {p} must end in {suffix}")
    return p


def run(args: argparse.Namespace) -> int:
    from ..io import atomic_write_text
    from ..report import text_table
    from ..report.compare import HEADERS, collect, fronts, markdown, plot, table_rows
    from .common import emit, log

    out = _target(args.out, "--out") if args.out else None
    plot_path = _target(args.plot, "--plot", ".png") if args.plot else None
    if out is not None and plot_path is None:
        plot_path = out.with_suffix(".png")
    rows, skipped = collect(args.dirs)
    for s in skipped:
        log(f"skipped {s}: no summary.json (unfinished run)")
    if plot_path is not None:
        plot(rows, plot_path)
    if out is not None:
        link = None if plot_path is None else os.path.relpath(plot_path.resolve(),
                                                               out.resolve().parent)
        atomic_write_text(out, markdown(rows, link))
    front = fronts(rows)
    result = {"runs": [r.to_dict() for r in rows], "pareto": front,
              "skipped": [str(s) for s in skipped],
              "out": None if out is None else str(out),
              "plot": None if plot_path is None else str(plot_path)}
    text = [text_table(HEADERS, table_rows(rows)), "",
            "Pareto front of test top-1 (no other run is cheaper and more accurate):",
            f"  vs params: {', '.join(front['params']) or '-'}",
            f"  vs MACs:   {', '.join(front['macs']) or '-'}"]
    if all(r.top1 is None for r in rows):
        text.append("no run has a test top-1; the front and plot are empty")
    text += [f"wrote {p}" for p in (out, plot_path) if p is not None]
    emit(args, result, "\n".join(text))
    return 0
