"""report.md and plots of a VACL run (``resprune vacl``).

Everything here reads the run's ``summary.json`` dict (see :mod:`resprune.cli.vacl` for its
fields), plus the per-epoch records for the training curves, so a report can be redrawn from a
finished run without the model. Accuracies arrive as fractions and are shown in percent.

- :func:`rms_histogram`: the compact, JSON-ready histogram of group RMS scores that
  ``summary.json`` stores (log-spaced bins shared by "before" and "after");
- :func:`rms_plot`: that histogram, before and after sparsity training in one figure, with
  the pruning cutoff marked;
- :func:`widths_plot`: output channels of every conv layer before and after pruning, in
  network order;
- :func:`write_report`: ``report.md`` + ``group_rms.png`` + ``widths.png`` (+
  ``training.png``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter

from ..io import atomic_write_text
from .plots import plt, save_figure, training_curves
from .tables import (
    METRIC_NAMES,
    data_name,
    fmt_acc,
    fmt_count,
    fmt_ms,
    fmt_pct,
    fmt_targets,
    markdown_table,
    targets_of,
)

RMS_PNG = "group_rms.png"
WIDTHS_PNG = "widths.png"
TRAINING_PNG = "training.png"
RMS_BINS = 40
# what the groups were scored by (--group-score), as the report names it
SCORE_LABELS = {"rms": "RMS norm", "layer_rms": "layer-normalised RMS",
                "taylor": "Taylor importance"}


def score_label(summary_or_prune: dict[str, Any]) -> str:
    """The name of the score the groups were ranked by: ``prune.score`` of a vacl summary, the
    ``score`` of a prune record or compress stage rule, else a summary's
    ``config.group_score``; RMS norm for records written before the score was kept."""
    pr = summary_or_prune.get("prune", summary_or_prune)
    score = pr.get("score") or (summary_or_prune.get("config") or {}).get("group_score")
    return SCORE_LABELS.get(score or "rms", score)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _sig(x: float) -> float:
    return float(f"{x:.6g}")


def rms_histogram(before: Sequence[float], after: Sequence[float], cutoff: float | None = None,
                  bins: int = RMS_BINS) -> dict[str, Any]:
    """Histogram of group RMS scores before and after sparsity training, on shared log bins.

    Returns ``edges`` (``bins + 1`` log-spaced bin edges spanning every positive score),
    ``before`` / ``after`` (counts per bin), ``zeros_before`` / ``zeros_after`` (scores that
    are exactly 0: a log axis cannot show them), ``median_before`` / ``median_after``,
    ``count`` (groups) and ``cutoff`` (the pruning cutoff, or None).
    """
    b = np.asarray(list(before), dtype=np.float64)
    a = np.asarray(list(after), dtype=np.float64)
    pos = np.concatenate([b[b > 0], a[a > 0]])
    lo, hi = (float(pos.min()), float(pos.max())) if pos.size else (1e-3, 1.0)
    if cutoff is not None and cutoff > 0:
        lo, hi = min(lo, cutoff), max(hi, cutoff)
    if hi <= lo * 1.0001:
        lo, hi = lo / 2, hi * 2
    edges = np.logspace(math.log10(lo) - 1e-6, math.log10(hi) + 1e-6, bins + 1)

    def counts(v: np.ndarray) -> list[int]:
        return [int(c) for c in np.histogram(v[v > 0], bins=edges)[0]]

    def median(v: np.ndarray) -> float | None:
        return _sig(float(np.median(v))) if v.size else None

    return {"edges": [_sig(e) for e in edges], "before": counts(b), "after": counts(a),
            "zeros_before": int((b <= 0).sum()), "zeros_after": int((a <= 0).sum()),
            "median_before": median(b), "median_after": median(a), "count": int(b.size),
            "cutoff": None if cutoff is None else _sig(cutoff)}


def rms_plot(summary: dict[str, Any], path: str | Path) -> None:
    """Both histograms of ``summary["group_rms"]`` in one figure (log RMS axis)."""
    h = summary["group_rms"]
    edges = np.asarray(h["edges"])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.stairs(h["before"], edges, fill=True, alpha=0.35, color="tab:grey",
              label=f"before sparsity training (median {h['median_before']:.3g})")
    ax.stairs(h["after"], edges, color="tab:blue", linewidth=1.6,
              label=f"after sparsity training (median {h['median_after']:.3g})")
    pr = summary["prune"]
    if h.get("cutoff") is not None and h["cutoff"] > 0:
        what = "threshold" if pr["mode"] == "threshold" else "highest score removed"
        ax.axvline(h["cutoff"], color="tab:red", linestyle="--", linewidth=1.2,
                   label=f"cutoff ({what}: {h['cutoff']:.3g})")
    zeros = [f"{h[k]} {w}" for k, w in (("zeros_before", "before"), ("zeros_after", "after"))
             if h.get(k)]
    if zeros:
        ax.plot([], [], " ", label="exactly 0 (not shown): " + ", ".join(zeros))
    ax.set_xscale("log")
    if edges[-1] / edges[0] < 100:  # under two decades: label the minor ticks too
        plain = FuncFormatter(lambda v, _: f"{v:.2g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    label = score_label(summary)
    ax.set_xlabel(f"group {label} (log scale)")
    ax.set_ylabel("channel groups")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Channel-group scores: {label} ({summary['model']}, {h['count']} groups; "
                 f"{pr['groups_removed']} removed)", fontsize=9)
    save_figure(fig, path)


def widths_plot(summary: dict[str, Any], path: str | Path) -> None:
    """Output channels of every conv layer before (grey) and after (blue) pruning."""
    names = list(summary["widths"])
    before = [summary["widths"][n][0] for n in names]
    after = [summary["widths"][n][1] for n in names]
    xs = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * len(names) + 2.5), 3.8))
    ax.bar(xs, before, width=0.8, color="lightgrey", label="before")
    ax.bar(xs, after, width=0.55, color="tab:blue", label="after pruning")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=90, fontsize=6 if len(names) > 30 else 7)
    ax.set_xlim(-0.7, len(names) - 0.3)
    ax.set_ylabel("output channels")
    ax.set_xlabel("conv layer (network order)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"Per-layer widths ({summary['model']}): "
                 f"{summary['params_removed_pct']:.1f} % of params and "
                 f"{summary['macs_removed_pct']:.1f} % of MACs removed", fontsize=9)
    save_figure(fig, path)


def comparison_table(summary: dict[str, Any]) -> str:
    """The input, the sparse-trained, the pruned and the fine-tuned model."""
    base = summary["base"]
    pr = summary["prune"]
    headers = ["model", "params", "MACs", "depth", "CPU latency b1", "CPU latency b64",
               "val top-1", "test top-1"]

    def lat(m: dict[str, Any], bs: str) -> str:
        return fmt_ms((m.get("cpu_latency_ms") or {}).get(bs))

    rows = [["input", fmt_count(base["params"]), fmt_count(base["macs"]), base["depth"],
             lat(base, "1"), lat(base, "64"), fmt_acc(base.get("val_top1")),
             fmt_acc(base.get("top1"))],
            ["after sparsity training", fmt_count(base["params"]), fmt_count(base["macs"]),
             base["depth"], "", "", fmt_acc(summary.get("val_top1_after_sparse")),
             fmt_acc(summary.get("top1_after_sparse"))],
            ["pruned (before fine-tuning)", fmt_count(pr["params_after"]),
             fmt_count(pr["macs_after"]), summary["depth"], "", "",
             fmt_acc(summary.get("val_top1_before_finetune")),
             fmt_acc(summary.get("top1_before_finetune"))],
            ["fine-tuned", fmt_count(summary["params"]), fmt_count(summary["macs"]),
             summary["depth"], lat(summary, "1"), lat(summary, "64"),
             fmt_acc(summary.get("val_top1")), fmt_acc(summary.get("top1"))],
            ["removed", fmt_pct(summary["params_removed_pct"]),
             fmt_pct(summary["macs_removed_pct"]), "", "", "", "", ""]]
    return markdown_table(headers, rows)


def widths_table(summary: dict[str, Any]) -> str:
    rows = [[f"`{n}`", b, a, fmt_pct(100 * a / b if b else 0.0, 1)]
            for n, (b, a) in summary["widths"].items()]
    return markdown_table(["conv layer", "channels before", "after", "kept"], rows)


def _rule(pr: dict[str, Any]) -> str:
    label = score_label(pr)
    if pr["mode"] == "threshold":
        return f"every group with {label} below {pr['threshold']:g} removed"
    names = dict(METRIC_NAMES)
    reached = "reached" if pr["target_reached"] else (
        "**not reached**: every remaining group was needed to keep at least one channel per "
        "layer")
    if not pr["target_reached"] and (pr.get("latency") or {}).get("check") == "measured":
        reached = ("**not reached**: the largest table goal tried did not save that much "
                   "measured time")
    cost = pr.get("cost") or "none"
    per = {"latency": "unit of latency", "params": "param", "macs": "MAC"}.get(cost)
    order = (f"groups removed by {label} per {per} saved (lowest first)" if per
             else f"the groups of lowest {label} removed")
    lat = pr.get("latency")
    predicted = (f"; predicted {lat['runtime']} latency at batch {lat['batch']}: "
                 f"{lat['predicted_before_ms']:.2f} -> {lat['predicted_after_ms']:.2f} ms"
                 if lat else "")
    if lat and lat.get("check") == "measured":
        names["latency"] = "the latency measured against the input"
        predicted += (f"; measured: {lat['input_ms']:.2f} -> {lat['pruned_ms']:.2f} ms "
                      f"({100 * lat['measured_reduction']:.2f} % less; table goal "
                      f"{100 * lat['goal']:.2f} % after {len(lat['rounds'])} timing "
                      "round(s))")
    return (f"{order} until {fmt_targets(targets_of(pr), names, 'fell by')}"
            f" ({reached}){predicted}")


def _reconstruction_note(summary: dict[str, Any]) -> str:
    """What ``--reconstruct`` did after the (last) pruning step, or nothing."""
    rec = summary["prune"].get("reconstruction")
    if not rec:
        return ""
    val = ("" if rec.get("val_top1_before") is None else
           f"; val top-1 {fmt_acc(rec['val_top1_before'])} right after the removal, "
           f"{fmt_acc(summary.get('val_top1_before_finetune'))} re-fitted")
    steps = len(summary.get("prune_steps") or [])
    when = f" after each of the {steps} steps; after the last," if steps > 1 else ":"
    return (f" Reconstruction{when} the {rec['layers_fitted']} layers whose outputs the removal "
            f"changed were re-fitted by least squares to the input's outputs on "
            f"{rec['samples']:,} training images (mean relative output error "
            f"{rec['error_before']:.3f} -> {rec['error_after']:.3f}{val}; "
            f"{rec['seconds']:.0f} s).")


def _steps_note(summary: dict[str, Any]) -> str:
    steps = summary.get("prune_steps") or []
    if not steps:
        return ""
    return (f", in {len(steps)} steps, each ranking the groups afresh and removing a geometric "
            f"share of the target, with {_n(summary['epochs_detail'].get('steps', 0), 'epoch')}"
            " of fine-tuning between them")


def _steps_table(summary: dict[str, Any]) -> list[str]:
    """One row per pruning step (``--prune-steps`` K > 1), else nothing."""
    steps = summary.get("prune_steps") or []
    if not steps:
        return []
    base = summary["base"]
    rows = [[s["step"], fmt_pct(100 * next(iter(s["rule"].values()))),
             fmt_count(s["params_after"]), fmt_pct(100 - 100 * s["params_after"] / base["params"]),
             fmt_count(s["macs_after"]), s["groups_removed"],
             fmt_acc(s["val_top1_before_finetune"]), s["finetune_epochs"],
             fmt_acc(s["val_top1_after_finetune"]) if s["val_top1_after_finetune"] is not None
             else ""]
            for s in steps]
    return ["## Pruning steps\n",
            markdown_table(["step", "removes of its input", "params after", "removed of the "
                            "input", "MACs after", "groups removed", "val top-1 right after",
                            "fine-tuning epochs", "val top-1 after fine-tuning"], rows)]


def vacl_section(summary: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """The report.md text of a vacl run (``plots``: PNG file names to embed)."""
    cfg, pr, h = summary["config"], summary["prune"], summary["group_rms"]
    detail = summary["epochs_detail"]
    kinds = summary.get("groups") or pr["groups_by_kind"]
    lines = [
        f"# VACL width pruning: {summary['model']} on {data_name(summary)}\n",
        f"Input run: `{summary['base']['run']}`. Sparsity training: "
        f"{_n(detail['sparse'], 'epoch')} at lr {cfg.get('sparse_lr')} with the "
        f"`{cfg.get('form')}` regularizer (beta {cfg.get('beta')}, lambda {cfg.get('lam')}, BN "
        f"{'in' if cfg.get('include_bn') else 'not in'} the groups, consumer slices "
        f"{'in' if cfg.get('include_consumers') else 'not in'} the groups). Pruning: "
        f"{_rule(pr)}{_steps_note(summary)}.{_reconstruction_note(summary)} Fine-tuning: "
        f"{_n(detail['finetune'], 'epoch')} at lr {cfg.get('finetune_lr')} without the "
        "regularizer.\n",
        comparison_table(summary),
        *_steps_table(summary),
        "Accuracies are top-1 on the validation split (carved from the training set) and on "
        "the test set; neither chose anything here (the pruning rule is the user's). MACs are "
        "multiply-accumulates of convolutions and linear layers for one image of shape "
        f"{summary['input_shape']}; depth counts weight layers; latency is the median CPU time "
        f"of one forward pass ({_n(summary.get('cpu_threads', 0), 'thread')}).\n",
        "## Pruning\n",
        f"{pr['groups_total']} channel groups ({kinds.get('cross', 0)} cross-layer, "
        f"{kinds.get('filter', 0)} filter); {pr['groups_removed']} removed "
        f"({pr['removed_by_kind'].get('cross', 0)} cross-layer, "
        f"{pr['removed_by_kind'].get('filter', 0)} filter). "
        f"{_n(pr['units_skipped_to_keep_layers'], 'removal')} skipped to keep at least one "
        f"channel per layer; {_n(pr['groups_fixed'], 'group')} could not be removed at all. "
        "Params "
        f"{fmt_count(pr['params_before'])} -> {fmt_count(pr['params_after'])}, MACs "
        f"{fmt_count(pr['macs_before'])} -> {fmt_count(pr['macs_after'])}.\n",
        f"Group scores ({score_label(summary)}): median {h['median_before']:.3g} before "
        "sparsity training, "
        f"{h['median_after']:.3g} after"
        + (f"; pruning cutoff {h['cutoff']:.3g}" if h.get("cutoff") is not None else "")
        + ".\n"]
    titles = {RMS_PNG: f"group scores ({score_label(summary)}) before and after sparsity "
                       "training",
              WIDTHS_PNG: "per-layer widths before and after pruning",
              TRAINING_PNG: "training curves (sparsity training, then fine-tuning)"}
    for name in plots:
        lines.append(f"![{titles.get(name, name)}]({name})\n")
    lines += ["## Per-layer widths\n", widths_table(summary)]
    return "\n".join(lines)


def write_report(out: str | Path, summary: dict[str, Any],
                 history: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Write ``report.md`` and its plots into ``out``; return the PNG names written.

    ``history``: per-epoch records of both trainings, numbered through (``metrics.jsonl``).
    """
    out = Path(out)
    rms_plot(summary, out / RMS_PNG)
    widths_plot(summary, out / WIDTHS_PNG)
    plots = [RMS_PNG, WIDTHS_PNG]
    if history:
        d = summary["epochs_detail"]
        training_curves(history, out / TRAINING_PNG,
                        title=f"{summary['model']}: sparsity training (epochs 1-{d['sparse']}), "
                              f"fine-tuning (next {d['finetune'] + d.get('steps', 0)})")
        plots.append(TRAINING_PNG)
    atomic_write_text(out / "report.md", vacl_section(summary, plots))
    return plots
