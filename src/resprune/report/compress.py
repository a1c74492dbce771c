"""report.md and the size plot of a compress run (``resprune compress``).

Everything here reads the run's ``summary.json`` dict (fields: :mod:`resprune.cli.compress`),
so a report can be redrawn from a finished run without the models. The stages' own reports
and plots stay in ``stages/<i>-<name>/``; ``report.md`` embeds those plots by relative path.

- :func:`stage_table`: the base and the model after each stage, side by side;
- :func:`sizes_plot`: params and MACs (percent of the base) after each stage, as bars;
- :func:`write_report`: ``report.md`` + ``sizes.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_text
from .implosion import STOP_REASONS
from .plots import plt, save_figure
from .tables import (
    data_name,
    fmt_acc,
    fmt_count,
    fmt_ms,
    fmt_pct,
    fmt_targets,
    markdown_table,
    targets_of,
)
from .vacl import score_label

SIZES_PNG = "sizes.png"
STAGE_TITLES = {"train": "base training", "implode": "Network Implosion (depth)",
                "vacl": "VACL (width)", "finetune": "final fine-tuning"}



def columns(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(label, record)`` for the base and for the model after each pruning / tuning stage."""
    trained = summary["stages"][0]["name"] == "train"
    cols = [("base (trained)" if trained else "base (input)", summary["base"])]
    cols += [(f"after {r['name']}", r) for r in summary["stages"] if r["name"] != "train"]
    return cols


def stage_table(summary: dict[str, Any]) -> str:
    """The base and each stage's result; removals vs the column before, then the totals."""
    base = summary["base"]
    first = summary["stages"][0]
    rows = [[label, fmt_count(m["params"]), fmt_count(m["macs"]), m["depth"],
             fmt_ms((m.get("cpu_latency_ms") or {}).get("64")), fmt_acc(m.get("val_top1")),
             fmt_acc(m.get("top1")),
             "" if i == 0 else fmt_pct(m["params_removed_pct"]),
             "" if i == 0 else fmt_pct(m["macs_removed_pct"]),
             (first["epochs"] if first["name"] == "train" else "-") if i == 0 else m["epochs"]]
            for i, (label, m) in enumerate(columns(summary))]
    rows.append(["**total vs base**", "", "", f"{fmt_pct(summary['layers_removed_pct'])} "
                 "fewer", "", _delta(base.get("val_top1"), summary.get("val_top1")),
                 _delta(base.get("top1"), summary.get("top1")),
                 fmt_pct(summary["params_removed_pct"]), fmt_pct(summary["macs_removed_pct"]),
                 summary["epochs"]])
    return markdown_table(["model", "params", "MACs", "depth", "CPU latency b64", "val top-1",
                           "test top-1", "params removed", "MACs removed", "epochs"], rows)


def _delta(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "-"
    return f"{100 * (after - before):+.2f} points"


def sizes_plot(summary: dict[str, Any], path: str | Path) -> None:
    """Params and MACs after each stage as percent of the base (counts on the bars)."""
    cols = columns(summary)
    base = summary["base"]
    xs = np.arange(len(cols))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.5 * len(cols) + 1.5), 3.8))
    for shift, key, color, name in ((-0.2, "params", "tab:blue", "params"),
                                    (0.2, "macs", "tab:orange", "MACs")):
        vals = [100 * m[key] / base[key] if base[key] else 0.0 for _, m in cols]
        bars = ax.bar(xs + shift, vals, width=0.38, color=color, label=f"{name} (% of base)")
        for bar, (_, m) in zip(bars, cols):
            ax.annotate(fmt_count(m[key]), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{label}\n{m['depth']} layers" for label, m in cols], fontsize=8)
    ax.set_ylabel("% of the base model")
    ax.set_ylim(0, 115)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{summary['model']}: params -{summary['params_removed_pct']:.1f} %, MACs "
                 f"-{summary['macs_removed_pct']:.1f} %, layers "
                 f"-{summary['layers_removed_pct']:.1f} %", fontsize=9)
    save_figure(fig, path)


def stage_plots(out: str | Path, summary: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """``(stage name, [PNG paths relative to out])`` of every stage, in order."""
    out = Path(out)
    return [(r["name"], [f"{r['dir']}/{p.name}" for p in sorted((out / r["dir"]).glob("*.png"))])
            for r in summary["stages"]]


def _budget_text(summary: dict[str, Any]) -> str:
    b, cfg = summary["budget"], summary["config"]
    tol = cfg.get("tolerance")
    depth = (f"Network Implosion erased units while validation top-1 stayed within {tol} "
             "percentage points of its start net's")
    if b["mode"] != "latency" and targets_of(b):  # params, MACs or both
        reached = "reached" if b.get("reached") else "**not reached**"
        return (f"Budget: reduce the base's {fmt_targets(targets_of(b))} ({reached}). "
                f"{depth} (where it ran); VACL removed what was still missing.")
    if b["mode"] == "latency":
        reached = "reached" if b.get("reached") else "**not reached**"
        goal = (f"at most {b['target_ms']:g} ms" if "target_ms" in b else
                f"at least {100 * b['target_reduction']:.2f} % less")
        pred = (f" (input {b['base_ms']:.2f} ms, predicted {b['predicted_ms']:.2f} ms)"
                if b.get("predicted_ms") is not None else "")
        if b.get("check") == "measured":
            pred += (f"; the vacl stage met its share on the measured model "
                     f"({b['vacl_input_ms']:.2f} -> {b['measured_ms']:.2f} ms)")
        return (f"Budget: latency {goal} per batch in the per-layer latency table's runtime"
                f"{pred}, {reached}. {depth} (where it ran); VACL removed what was still "
                "missing.")
    if b["mode"] == "threshold":
        return (f"{depth}; VACL removed every channel group with {score_label(summary)} below "
                f"{b['threshold']:g}.")
    if b["mode"] == "auto":
        return (f"No target: every stage went as far as validation accuracy held. {depth}; "
                f"VACL pruned the largest share of params whose pruned copy, before "
                f"fine-tuning, kept validation top-1 within {b['auto_tolerance']:g} points of "
                "the sparse-trained model's.")
    return f"{depth}."


def _stage_note(r: dict[str, Any]) -> str:
    link = f"[report]({r['dir']}/report.md)"
    if r["name"] == "implode":
        why = STOP_REASONS.get(r.get("stop_reason") or "", r.get("stop_reason") or "?")
        return (f"{r['layers_removed']} weight layers erased; stopped because {why}. {link}")
    if r["name"] == "vacl":
        rule = r.get("rule") or {}
        if rule.get("mode") == "threshold":
            how = f"groups with {score_label(rule)} below {rule.get('threshold'):g} removed"
        else:
            how = ("target " + ", ".join(f"{m} reduction {100 * v:.2f} %"
                                         for m, v in targets_of(rule).items())
                   + " of this stage's input"
                   + ("" if rule.get("target_reached") else " (not reached)"))
            if rule.get("auto_tolerance") is not None:
                how += f", chosen on the validation split (tolerance {rule['auto_tolerance']:g})"
        return f"{how}. {link}"
    return f"{r['epochs']} epoch(s). {link}"


def compress_section(summary: dict[str, Any], out: str | Path,
                     plots: Sequence[str] = ()) -> str:
    """The report.md text of a compress run (``plots``: its own PNG names to embed)."""
    names = [r["name"] for r in summary["stages"]]
    lines = [f"# Compression: {summary['model']} on {data_name(summary)}\n",
             f"Input: `{summary['base']['run']}`. Stages: {' -> '.join(names)} (each a run "
             "directory under `stages/`; this directory holds the final model). "
             + _budget_text(summary) + "\n",
             stage_table(summary),
             "Removals are relative to the column before; the last row compares the final model "
             "with the base. Accuracies are top-1 on the validation split (carved from the "
             "training set; every decision uses it) and on the test set (only reported). MACs "
             "are multiply-accumulates of convolutions and linear layers for one image of "
             f"shape {summary['input_shape']}; depth counts weight layers; latency is the median "
             "CPU time of one forward pass of a batch of 64.\n"]
    for name in plots:
        lines.append(f"![params and MACs after each stage]({name})\n")
    lines.append("## Stages\n")
    for i, ((name, pngs), r) in enumerate(zip(stage_plots(out, summary), summary["stages"]), 1):
        lines.append(f"### {i}. {STAGE_TITLES.get(name, name)} (`{r['dir']}`)\n")
        lines.append(_stage_note(r) + "\n")
        for png in pngs:
            lines.append(f"![{name}: {Path(png).stem.replace('_', ' ')}]({png})\n")
    return "\n".join(lines)


def write_report(out: str | Path, summary: dict[str, Any]) -> list[str]:
    """Write ``report.md`` and ``sizes.png`` into ``out``; return the PNG names written."""
    out = Path(out)
    sizes_plot(summary, out / SIZES_PNG)
    atomic_write_text(out / "report.md", compress_section(summary, out, [SIZES_PNG]))
    return [SIZES_PNG]
