"""report.md and plots of a Network Implosion run (``resprune implode``).

Everything here reads the run's ``summary.json`` dict only (see :mod:`resprune.cli.implode`
for its fields), so a report can be redrawn from a finished run without the model. Accuracies
arrive as fractions and are shown in percent.

- :func:`step_table`: one row per step (unit(s) erased, priority, val top-1, accepted?,
  depth, params, MACs, CPU latency at batch 64 of the net after that step), led by the start
  net (row 0);
- :func:`priority_plot`: the priority of every residual unit in network order at the first
  step, erased units marked with the step that erased them;
- :func:`accuracy_depth_plot`: validation top-1 against depth over the steps, with the
  acceptance baseline (and the tolerance line) marked;
- :func:`write_report`: ``report.md`` + ``priorities.png`` + ``accuracy_vs_depth.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from .plots import plt, save_figure
from .tables import data_name, fmt_acc, fmt_count, fmt_ms, fmt_pct, markdown_table

PRIORITY_PNG = "priorities.png"
ACCURACY_PNG = "accuracy_vs_depth.png"

STOP_REASONS = {
    "accuracy": "the next erasure lost validation accuracy beyond the tolerance (rolled back)",
    "target_depth": "the target depth was reached",
    "max_steps": "the maximum number of steps was reached",
    "nothing_erasable": "no erasable unit was left",
}


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _latency_note(summary: dict[str, Any]) -> str:
    t = summary.get("step_latency") or {}
    return (f"Latency: CPU time of one forward pass at batch {t.get('batch', 64)} of the "
            "architecture after the step (gates folded), median of "
            f"{t.get('repeats', '?')} runs timed interleaved with the other steps' nets, "
            f"{_n(t.get('threads', 0), 'thread')}.")


def _fmt_priority(p: float | None) -> str:
    return "-" if p is None else f"{p:.4g}"


def step_table(summary: dict[str, Any]) -> str:
    """Markdown table of the start net and every step (rolled-back steps included)."""
    start = summary["start"]
    # untrained measurements exist with --recalibrate (cut steps) or --retrain needed
    cut = any("cut_val_top1" in h for h in summary["steps"])
    headers = ["step", "erased unit(s)", "priority",
               *(["val top-1 right after the cut"] if cut else []), "val top-1", "accepted",
               "depth", "params", "MACs", "CPU latency b64"]
    rows: list[list[Any]] = [["0 (start)", "-", "-", *(["-"] if cut else []),
                              fmt_acc(start["val_top1"]), "-", start["depth"],
                              fmt_count(start["params"]), fmt_count(start["macs"]),
                              fmt_ms(start.get("cpu_latency_ms_64"))]]
    for h in summary["steps"]:
        names = h["erased"]
        rows.append([h["step"], ", ".join(names) or "-",
                     ", ".join(_fmt_priority(h["priorities"].get(n)) for n in names) or "-",
                     *([fmt_acc(h.get("cut_val_top1"))] if cut else []),
                     fmt_acc(h["val_top1"]), "yes" if h["accepted"] else "no (rolled back)",
                     h["depth"], fmt_count(h["params"]), fmt_count(h["macs"]),
                     fmt_ms(h.get("cpu_latency_ms_64"))])
    return markdown_table(headers, rows)


def comparison_table(summary: dict[str, Any]) -> str:
    """Input model against the imploded one (test top-1 is reported, never used)."""
    base = summary["base"]
    headers = ["model", "depth (weight layers)", "params", "MACs", "CPU latency b1",
               "CPU latency b64", "val top-1", "test top-1"]

    def row(label: str, m: dict[str, Any]) -> list[Any]:
        lat = m.get("cpu_latency_ms") or {}
        return [label, m["depth"], fmt_count(m["params"]), fmt_count(m["macs"]),
                fmt_ms(lat.get("1")), fmt_ms(lat.get("64")), fmt_acc(m.get("val_top1")),
                fmt_acc(m.get("top1"))]

    return markdown_table(headers, [row("input", base), row("imploded", summary),
                                    ["removed", fmt_pct(summary["layers_removed_pct"]),
                                     fmt_pct(summary["params_removed_pct"]),
                                     fmt_pct(summary["macs_removed_pct"]), "", "", "", ""]])


def priority_plot(summary: dict[str, Any], path: str | Path) -> None:
    """Bar chart of every residual unit's priority at the first step, in network order.

    Erased units are red and labelled with the step that erased them (a dot marks their
    priority at that step, which may differ after retraining); kept units are blue; units
    that change resolution or width (never erasable) have no bar and a grey label.
    """
    units = summary["units"]
    erased = {e["name"]: e for e in summary["erased_units"]}
    first = summary["steps"][0]["scores"] if summary["steps"] else {}
    score = summary["config"].get("score", "gate")
    names = [u["name"] for u in units]
    xs = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 2), 3.8))
    heights = [first.get(n, 0.0) if u["erasable"] else 0.0 for n, u in zip(names, units)]
    colors = ["tab:red" if n in erased else "tab:blue" for n in names]
    ax.bar(xs, heights, color=colors, width=0.75)
    top = max(heights + [p["priority"] for p in erased.values()] + [1e-12])
    for x, n, u in zip(xs, names, units):
        if not u["erasable"]:
            ax.text(x, 0.02 * top, "n/e", ha="center", va="bottom", fontsize=7, color="grey",
                    rotation=90)
        elif n in erased:
            e = erased[n]
            ax.plot([x], [e["priority"]], "o", color="black", markersize=3.5)
            ax.text(x, max(first.get(n, 0.0), e["priority"]) + 0.02 * top, f"s{e['step']}",
                    ha="center", va="bottom", fontsize=7, color="tab:red")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    for tick, u in zip(ax.get_xticklabels(), units):
        if not u["erasable"]:
            tick.set_color("grey")
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel(f"priority ({score})")
    ax.set_xlabel("residual unit (network order)")
    handles = [plt.Rectangle((0, 0), 1, 1, color="tab:blue"),
               plt.Rectangle((0, 0), 1, 1, color="tab:red"),
               plt.Line2D([], [], marker="o", color="black", linestyle="", markersize=3.5)]
    ax.legend(handles, ["kept", "erased (sK: at step K)", "priority when erased"],
              fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Unit priorities at step 1 ({summary['model']}; n/e: changes shape, "
                 "never erasable)", fontsize=9)
    save_figure(fig, path)


def accuracy_depth_plot(summary: dict[str, Any], path: str | Path) -> None:
    """Validation top-1 (%) against depth: the start net, every step, the final net."""
    start, base, steps = summary["start"], summary["base"], summary["steps"]
    tol = float(summary["config"].get("tolerance") or 0.0)
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    base_pct = 100 * start["val_top1"]
    values = [base_pct] + [100 * h["val_top1"] for h in steps]
    ax.axhline(base_pct, color="grey", linestyle="-", linewidth=1,
               label=f"baseline {base_pct:.2f} % (start net)")
    show_input = base.get("val_top1") is not None and (base["val_top1"] != start["val_top1"]
                                                       or base["depth"] != start["depth"])
    if show_input:
        values.append(100 * base["val_top1"])
    if summary["epochs_detail"]["final"] > 0:
        values.append(100 * summary["val_top1"])
    low, high = min(values), max(values)
    if tol > 0 and base_pct - tol >= low - max(2.0, 0.5 * (high - low)):
        low = base_pct - tol  # the acceptance line is near the data: show it
        ax.axhline(low, color="grey", linestyle="--", linewidth=1,
                   label=f"baseline - tolerance ({tol:g} points)")
    elif tol > 0:
        ax.plot([], [], " ", label=f"tolerance {tol:g} points (line below the plot)")
    pad = max(1.0, 0.08 * (high - low))
    ax.set_ylim(low - pad, high + pad)
    if show_input:
        ax.plot([base["depth"]], [100 * base["val_top1"]], "*", color="tab:purple",
                markersize=9, label="input model")
    path_x, path_y = [start["depth"]], [base_pct]
    rejected = []
    for h in steps:
        if h["accepted"]:
            path_x.append(h["depth"])
            path_y.append(100 * h["val_top1"])
        else:
            rejected.append(h)
    ax.plot(path_x, path_y, "o-", color="tab:blue", markersize=4,
            label="start net, accepted steps")
    for h in steps:
        ax.annotate(str(h["step"]), (h["depth"], 100 * h["val_top1"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 4))
    if rejected:
        ax.plot([h["depth"] for h in rejected], [100 * h["val_top1"] for h in rejected], "x",
                color="tab:red", markersize=7, label="rolled back")
    if summary["epochs_detail"]["final"] > 0:
        ax.plot([summary["depth"]], [100 * summary["val_top1"]], "D", color="tab:green",
                markersize=5, label="after final retrain")
    ax.invert_xaxis()  # fewer layers to the right
    ax.set_xlabel("depth (weight layers)")
    ax.set_ylabel("validation top-1 (%)")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Validation accuracy vs depth ({summary['model']}, score "
                 f"{summary['config'].get('score')})", fontsize=9)
    save_figure(fig, path)


COST_UNITS = {"params": "param", "macs": "MAC", "latency": "ms of latency"}


def steps_note(cfg: dict[str, Any], start_val_top1: float) -> str:
    """How the run's steps chose, scored and accepted units, from its config."""
    patience = cfg.get("patience", 1)
    screen, recal = cfg.get("screen", 0), cfg.get("recalibrate", 0)
    per = cfg.get("screen_cost", "none")
    rounds = min(cfg.get("screen_rounds", 1), cfg.get("per_step", 1))
    least = ("cost least validation loss" if per == "none" else
             f"raised the validation loss least per {COST_UNITS.get(per, per)} freed")
    chose = ("erases the lowest-priority unit(s)" if not screen else
             f"erases, of the {screen} lowest-priority units, the one(s) whose removal alone "
             + least if rounds <= 1 else
             f"erases units chosen in {rounds} rounds (each round screens the {screen} "
             "lowest-priority units left with the earlier rounds' choices already cut and "
             f"takes its share of those whose removal {least})")
    text = [f"Each step {chose}, "
            + ("is first scored without retraining and retrained only when that fails"
               if cfg.get("retrain") == "needed" else "retrains")
            + f", and is accepted when validation top-1 >= {fmt_acc(start_val_top1)} (the "
            "start net's) minus the tolerance; otherwise the step is rolled back and "
            + ("the loop stops." if patience <= 1 else
               f"the next candidates are tried; {patience} rejections in a row stop the loop.")]
    # a cut is measured untrained before it retrains when statistics are re-estimated or
    # the net is re-fitted
    measured_cut = cfg.get("erase", "cut") == "cut"
    refit = cfg.get("reconstruct", 0) if measured_cut else 0
    if (recal or refit) and measured_cut:
        text.append("A cut that retrains was first measured as it was (the step's validation "
                    "top-1 right after the cut).")
    if refit:
        text.append(f"Right after every cut, each remaining conv and linear layer was "
                    f"re-fitted by least squares to the net before the cut, on {refit} "
                    "training images, and the cut was scored re-fitted.")
    if recal and (screen or (not refit and (cfg.get("retrain") == "needed" or measured_cut))):
        text.append(f"Every untrained score{' of a screened candidate' if refit else ''} "
                    f"was taken with BatchNorm statistics re-estimated on {recal} training "
                    "images.")
    return " ".join(text)


def implosion_section(summary: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """The report.md text of an implode run (``plots``: PNG file names to embed)."""
    cfg, start = summary["config"], summary["start"]
    erased = summary["erased_units"]
    lines = [f"# Network Implosion: {summary['model']} on {data_name(summary)}\n",
             f"Input run: `{summary['base']['run']}`. Priority score `{cfg.get('score')}`, "
             f"{_n(cfg.get('per_step', 1), 'unit')} per step, retraining "
             f"{_n(cfg.get('retrain_epochs', 0), 'epoch')} at lr {cfg.get('retrain_lr')}"
             f"{' only when a step fails without it' if cfg.get('retrain') == 'needed' else ''}, "
             f"tolerance {cfg.get('tolerance')} percentage points of validation top-1.\n",
             comparison_table(summary),
             f"Erased {_n(len(erased), 'unit')} in {_n(len(summary['steps']), 'step')}: "
             f"{', '.join(e['name'] for e in erased) or 'none'}. Stopped because "
             f"{STOP_REASONS.get(summary['stop_reason'], summary['stop_reason'])}.\n",
             f"Training spent {_n(summary['epochs'], 'epoch')} in all "
             f"({summary['epochs_detail']['adapt']} adapting new gates, "
             f"{summary['epochs_detail']['retrain']} retraining after erasures, "
             f"{summary['epochs_detail']['final']} final).\n",
             "## Steps\n",
             steps_note(cfg, start["val_top1"]) + " The test set plays no part in any "
             "decision. " + _latency_note(summary) + "\n",
             step_table(summary)]
    if start.get("gates_added"):
        lines.append(f"The input model had no priority gates: {start['gates_added']} were "
                     f"added (w = 1) and trained {_n(summary['epochs_detail']['adapt'], 'epoch')} "
                     "before step 1; row 0 is that adapted net.\n")
    lines.append("MACs are multiply-accumulates of convolutions and linear layers for one "
                 f"image of shape {summary['input_shape']}; depth counts weight layers.\n")
    titles = {PRIORITY_PNG: "unit priorities", ACCURACY_PNG: "validation accuracy vs depth"}
    for name in plots:
        lines.append(f"![{titles.get(name, name)}]({name})\n")
    return "\n".join(lines)


def write_report(out: str | Path, summary: dict[str, Any]) -> list[str]:
    """Write ``report.md`` and its plots into ``out``; return the PNG names written."""
    out = Path(out)
    plots = []
    if summary["units"]:
        priority_plot(summary, out / PRIORITY_PNG)
        plots.append(PRIORITY_PNG)
    accuracy_depth_plot(summary, out / ACCURACY_PNG)
    plots.append(ACCURACY_PNG)
    atomic_write_text(out / "report.md", implosion_section(summary, plots))
    return plots
