"""``summary.json`` of a compress run (kind ``compress``), from its stages' summaries.

Besides the common fields of the final model (``params``, ``macs``, ``depth``, ``top1``,
``top5``, ``val_top1``, ``cpu_latency_ms``, ``input_shape``, ``data``, ``config``), ``epochs``
and ``seconds`` summed over the stages:

- ``base``: the compress input (or the trained base) on the same splits: ``run``, ``params``,
  ``macs``, ``depth``, ``top1``, ``top5``, ``val_top1``, ``cpu_latency_ms``;
- ``stages``: one record per stage in order: ``name``, ``dir`` (relative to OUT),
  ``params``, ``macs``, ``depth``, ``top1``, ``val_top1``, ``params_removed_pct`` /
  ``macs_removed_pct`` (vs the previous stage, or the base for the first), ``epochs``,
  ``seconds`` (+ ``layers_removed`` and ``stop_reason`` for implode, ``rule`` for vacl);
- ``params_removed_pct``, ``macs_removed_pct``, ``layers_removed_pct``: the final model vs
  ``base``;
- ``budget``: how much the pipeline was asked to remove (``mode``: ``params`` / ``macs`` /
  ``params+macs`` / ``latency`` / ``threshold`` / ``auto`` / ``none``; ``targets``
  (``{metric: reduction}``) for params and MACs targets, ``target_reduction`` for one target
  (or ``target_ms``) and ``reached`` (every target) for a target; a latency budget also has
  ``base_ms``, the input's time in its latency table, and ``predicted_ms``, the vacl stage's
  prediction of the result; with
  ``latency_check: measured`` also ``check``, ``vacl_input_ms`` and ``measured_ms``, the vacl
  stage's input and result timed against each other, which decide ``reached``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import __version__, distributed
from ..report import pct_removed

BASE_KEYS = ("params", "macs", "depth", "top1", "top5", "val_top1", "cpu_latency_ms")
STAGE_KEYS = ("params", "macs", "depth", "top1", "val_top1", "cpu_latency_ms")


def stage_record(name: str, where: Path, out: Path, s: dict[str, Any],
                 prev: dict[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = {"name": name, "dir": where.relative_to(out).as_posix(),
                           **{k: s.get(k) for k in STAGE_KEYS},
                           "params_removed_pct": pct_removed(prev["params"], s["params"]),
                           "macs_removed_pct": pct_removed(prev["macs"], s["macs"]),
                           "epochs": int(s.get("epochs") or 0),
                           "seconds": float(s.get("seconds") or 0.0)}
    if name == "implode":
        rec["layers_removed"] = int(prev["depth"]) - int(s["depth"])
        rec["stop_reason"] = s.get("stop_reason")
    if name == "vacl":
        pr = s.get("prune") or {}
        rec["rule"] = {k: pr.get(k) for k in ("mode", "score", "threshold",
                                               "target_reduction", "targets",
                                               "target_reached")}
        if pr.get("auto"):
            rec["rule"]["auto_tolerance"] = pr["auto"]["tolerance"]
    return rec


def compress_summary(out: Path, done: list[tuple[str, Path, dict[str, Any]]],
                     base: dict[str, Any], budget: dict[str, Any],
                     config: dict[str, Any], base_latency_ms: float | None = None
                     ) -> dict[str, Any]:
    records, prev = [], base
    for name, where, s in done:
        records.append(stage_record(name, where, out, s, prev))
        prev = s
    last = done[-1][2]
    b = dict(budget)
    if b.get("targets"):  # params, MACs or both: every one must be reached
        b["reached"] = all(pct_removed(base[m], last[m]) >= 100 * r - 1e-9
                           for m, r in b["targets"].items())
    if b["mode"] == "latency" and base_latency_ms is not None:
        vacl = next((s for name, _, s in done if name == "vacl"), {})
        lat = (vacl.get("prune") or {}).get("latency") or {}
        b["base_ms"] = base_latency_ms
        b["predicted_ms"] = lat.get("predicted_after_ms")
        goal = b.get("target_ms", (1 - b.get("target_reduction", 0.0)) * base_latency_ms)
        b["reached"] = b["predicted_ms"] is not None and b["predicted_ms"] <= goal * (1 + 1e-9)
        if lat.get("check") == "measured":  # the vacl stage timed its result: that decides
            b.update(check="measured", vacl_input_ms=lat["input_ms"],
                     measured_ms=lat["pruned_ms"],
                     reached=bool((vacl.get("prune") or {}).get("target_reached")))
    return {"kind": "compress", "model": done[0][2].get("model"), "resprune": __version__,
            "world_size": distributed.world_size(),
            "input_shape": last.get("input_shape"), "data": last.get("data"),
            **{k: last.get(k) for k in BASE_KEYS},
            "epochs": sum(r["epochs"] for r in records),
            "seconds": round(sum(r["seconds"] for r in records), 2),
            "config": config, "base": base, "stages": records,
            "params_removed_pct": pct_removed(base["params"], last["params"]),
            "macs_removed_pct": pct_removed(base["macs"], last["macs"]),
            "layers_removed_pct": pct_removed(base["depth"], last["depth"]),
            "budget": b}
