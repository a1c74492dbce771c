"""The vacl-specific fields of ``summary.json``, built from the pipeline state.

``summary.json`` (kind ``vacl``) holds, besides the common fields (``params``, ``macs``,
``depth``, ``top1``, ``top5``, ``val_top1``, ``cpu_latency_ms``, ``input_shape``, ``data``,
``config``, ``seconds``):

- ``base``: the input model on the same splits (``run``, ``params``, ``macs``, ``depth``,
  ``top1``, ``top5``, ``val_top1``, ``cpu_latency_ms``);
- ``params_removed_pct`` = 100 * (base params - params) / base params, ``macs_removed_pct``;
- ``top1_after_sparse`` / ``val_top1_after_sparse`` (after stage 1),
  ``top1_before_finetune`` / ``val_top1_before_finetune`` (the pruned model);
- ``widths``: ``{conv layer: [out channels before, after]}`` in network order;
- ``prune``: the essentials of the library's prune report (mode, threshold / target, whether
  the target was reached, group counts removed by kind, params and MACs before / after) and
  ``cutoff``: the highest score removed (the threshold, for a threshold rule); with
  ``auto_tolerance``, ``auto``: the candidates tried and the choice
  (:func:`resprune.vacl.select.choose_reduction`);
- ``group_rms``: a log-scale histogram of the groups' scores before and after sparsity
  training (see :func:`resprune.report.vacl.rms_histogram`);
- ``near_zero_share``, ``lam_target_share``, ``lam_final`` (the lambda schedule);
- ``prune_steps``: with ``prune_steps`` K > 1, one record per step
  (:func:`step_fields`; ``prune`` and ``widths`` then describe all K steps against the input,
  ``top1_before_finetune`` the last step); empty for one step;
- ``epochs`` (sparse + fine-tunes) and ``epochs_detail`` (``sparse``, ``steps``: the
  fine-tunes between steps, ``finetune``); ``seconds`` is the training and
  pruning time of the stages (a resumed run counts every stage once).
"""

from __future__ import annotations

from typing import Any

import torch

from ..report import pct_removed
from ..report.vacl import rms_histogram

# the parts of vacl.prune's report that go into summary.json (the full one is in stages/pruned)
PRUNE_KEYS = ("mode", "score", "round_to", "max_layer_reduction", "cost", "latency",
              "threshold", "target_reduction", "targets", "target_reached", "groups_total",
              "groups_by_kind", "groups_fixed", "groups_removed", "removed_by_kind",
              "units_skipped_to_keep_layers", "params_before", "params_after",
              "params_reduction", "macs_before", "macs_after", "macs_reduction",
              "latency_reduction", "reconstruction")
BASE_KEYS = ("params", "macs", "depth", "top1", "top5", "val_top1", "cpu_latency_ms")


def _trainings(state: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """``(stage, epoch records)`` in order: sparse, the fine-tunes between pruning steps
    (``step-k``), the final fine-tune."""
    steps = [(f"step-{s['step']}", s.get("finetune_history") or [])
             for s in state.get("steps") or [] if "finetune_history" in s]
    return [("sparse", state.get("sparse_history") or []), *steps,
            ("finetune", state.get("finetune_history") or [])]


def combined_history(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every training's epoch records, numbered through (``stage``, ``stage_epoch`` added)."""
    out = []
    for stage, records in _trainings(state):
        for r in records:
            out.append({**r, "epoch": len(out) + 1, "stage": stage, "stage_epoch": r["epoch"]})
    return out


def step_fields(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Each pruning step of ``prune_steps`` > 1: its rule, sizes after it, groups removed,
    top-1 right after it and after its fine-tune (the last step's is the final model's)."""
    out, steps = [], state.get("steps") or []
    for s in steps:  # the last step's fine-tune is the final one
        history = s.get("finetune_history") if s is not steps[-1] else state.get(
            "finetune_history")
        tuned = (history or [{}])[-1]
        out.append({"step": s["step"], "rule": s["rule"], "target_reached": s["target_reached"],
                    "params_after": s["params_after"], "macs_after": s["macs_after"],
                    "groups_removed": s["groups_removed"],
                    "top1_before_finetune": s["before_finetune"]["top1"],
                    "val_top1_before_finetune": s["before_finetune"]["val_top1"],
                    "val_top1_after_finetune": tuned.get("val_acc"),
                    "finetune_epochs": len(history or []),
                    "reconstruction": s.get("reconstruction")})
    return out


def vacl_fields(state: dict[str, Any]) -> dict[str, Any]:
    """The vacl-specific summary fields (module docstring) from the pipeline state."""
    base, pr = state["base"], state["prune"]
    trainings = _trainings(state)
    detail = {"sparse": len(trainings[0][1]), "finetune": len(trainings[-1][1]),
              "steps": sum(len(h) for _, h in trainings[1:-1])}
    seconds = sum(r.get("seconds") or 0.0 for _, h in trainings for r in h) + state.get(
        "prune_seconds", 0.0)
    return {
        "base": base,
        "params_removed_pct": pct_removed(base["params"], pr["params_after"]),
        "macs_removed_pct": pct_removed(base["macs"], pr["macs_after"]),
        "top1_after_sparse": state["after_sparse"]["top1"],
        "val_top1_after_sparse": state["after_sparse"]["val_top1"],
        "top1_before_finetune": state["before_finetune"]["top1"],
        "val_top1_before_finetune": state["before_finetune"]["val_top1"],
        "widths": state["widths"],
        "prune": pr,
        "groups": state["groups"],
        "group_rms": rms_histogram(state["rms_before"], state["rms_after"], pr["cutoff"]),
        "prune_steps": step_fields(state),
        "epochs": sum(detail.values()),
        "epochs_detail": detail,
        "seconds": round(seconds, 2),
        "cpu_threads": torch.get_num_threads(),
        "near_zero_share": state.get("near_zero_share"),
        "lam_target_share": state.get("lam_target_share"),
        "lam_final": next((r["lam"] for r in reversed(trainings[0][1]) if "lam" in r), None),
    }
