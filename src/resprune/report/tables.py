"""Tables for the terminal and for report.md, and the number formats they share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def fmt_count(n: float | None) -> str:
    """1234567 -> '1.23 M' (params, MACs)."""
    if n is None:
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def fmt_pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f} %"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} ms"


def data_name(summary: dict[str, Any]) -> str:
    """The dataset a run used, for titles (``the given loaders`` for a library run on loaders
    of the user's own)."""
    return (summary.get("data") or {}).get("name") or "the given loaders"


def fmt_acc(x: float | None) -> str:
    """Accuracy stored as a fraction in [0, 1], shown in percent."""
    return "-" if x is None else f"{100 * x:.2f} %"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(map(str, headers)) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(out) + "\n"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pct_removed(before: float, after: float) -> float:
    return 0.0 if not before else 100.0 * (before - after) / before


METRIC_NAMES = {"params": "parameters", "macs": "MACs",
                "latency": "the latency predicted by the per-layer table"}


def targets_of(rule: dict[str, Any]) -> dict[str, float]:
    """The reduction targets of a prune report or compress budget (``targets``, or the one
    ``mode`` / ``target_reduction`` of runs written before targets could be combined)."""
    if rule.get("targets"):
        return dict(rule["targets"])
    if rule.get("target_reduction") is not None:
        return {rule["mode"]: float(rule["target_reduction"])}
    return {}


def fmt_targets(targets: dict[str, float], names: dict[str, str] = METRIC_NAMES,
                verb: str = "by") -> str:
    """``{"params": 0.85, "macs": 0.7}`` -> 'parameters by at least 85.00 % and MACs by at
    least 70.00 %' (``verb`` replaces 'by')."""
    return " and ".join(f"{names.get(m, m)} {verb} at least {100 * v:.2f} %"
                        for m, v in targets.items())
