"""The implode-specific fields of ``summary.json``.

``summary.json`` (kind ``implode``) holds, besides the common
fields (``params``, ``macs``, ``depth``, ``top1``, ``val_top1``, ``cpu_latency_ms``, ...):

- ``base``: the input model measured on the same splits (``run``, ``params``, ``macs``,
  ``depth``, ``top1``, ``val_top1``, ``cpu_latency_ms``);
- ``start``: the net the loop starts from (gates added and adapted if the input had none):
  ``val_top1`` is the acceptance baseline; ``gates_added`` counts the new gates;
- ``erased_units``: ``{"name", "priority", "step"}`` in the order the units were erased;
- ``layers_removed_pct`` = 100 * (base depth - depth) / base depth, ``params_removed_pct``,
  ``macs_removed_pct``;
- ``epochs``: every training epoch the loop spent (adapt + retrainings, rolled-back ones
  included, + final), split in ``epochs_detail``;
- ``stop_reason`` and ``steps``: the library's step history, each step with
  ``cpu_latency_ms_64`` (CPU latency at batch 64 of the architecture after that step);
- ``units``: every residual unit of the input in network order (``erasable``), for the plot;
  ``gates``: the surviving gates' values before they were folded into the BNs;
  ``step_latency``: how the per-step latency was timed (batch, warm-up, repeats,
  threads; the nets of all steps interleaved).

Per-step latency is measured after the loop, from the architecture each step produced (input
spec + that step's erasures, gates folded): latency depends on the architecture, not on the
weight values, so this costs the loop nothing and survives ``--resume`` (the library keeps
only the last accepted step's weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import build
from ..report import pct_removed
from .erase import erase_units
from .gates import fold_gates

# Per-step latency: the nets of all steps are timed together, interleaved (each round times
# every net once, alternating the order; resprune.measure.compare.time_models), so a burst of
# load from other processes hits all steps alike; the median of each net's runs is kept.
STEP_LATENCY_BATCH = 64
STEP_LATENCY_WARMUP = 1
STEP_LATENCY_REPEATS = 5
BASE_KEYS = ("params", "macs", "depth", "top1", "top5", "val_top1", "cpu_latency_ms")


def implosion_fields(result, base: dict[str, Any], units: list[dict[str, Any]],
                     spec: dict[str, Any] | None, shape, gates_added: int) -> dict[str, Any]:
    """The implode-specific summary fields (see the module docstring).

    ``spec`` is the input model's architecture; ``gates_added`` the number of gates the loop
    had to add (0 for an input trained with --priority-gates).
    """
    history = [dict(h) for h in result.history]
    erased_so_far: list[str] = []
    erased_after: list[list[str]] = [[]]  # the start net, then the net after each step
    for h in history:
        erased_after.append(erased_so_far + h["erased"])
        if h["accepted"]:
            erased_so_far = erased_so_far + h["erased"]
    lat = (arch_latencies(spec, erased_after, shape) if spec is not None
           else [None] * len(erased_after))  # a model outside the zoo: no spec to rebuild
    start = {**result.baseline, "gates_added": gates_added, "cpu_latency_ms_64": lat[0]}
    for h, ms in zip(history, lat[1:]):
        h["cpu_latency_ms_64"] = ms
    erased = [{"name": n, "priority": h["priorities"][n], "step": h["step"]}
              for h in history if h["accepted"] for n in h["erased"]]
    detail = {"adapt": int(result.adapt_epochs),
              "retrain": int(sum(h["epochs"] for h in history)),
              "final": int(result.final["epochs"])}
    final_depth = int(result.final["depth"])
    return {
        "base": base, "start": start, "erased_units": erased,
        "layers_removed_pct": pct_removed(base["depth"], final_depth),
        "params_removed_pct": pct_removed(base["params"], result.final["params"]),
        "macs_removed_pct": pct_removed(base["macs"], result.final["macs"]),
        "epochs": sum(detail.values()), "epochs_detail": detail,
        "stop_reason": result.stop_reason, "steps": history, "units": units,
        "gates": result.gates,
        "step_latency": {"batch": STEP_LATENCY_BATCH, "warmup": STEP_LATENCY_WARMUP,
                         "repeats": STEP_LATENCY_REPEATS, "interleaved": True,
                         "threads": torch.get_num_threads()},
    }


def arch_latencies(spec: dict[str, Any], erased: list[list[str]], shape) -> list[float]:
    """CPU ms at batch 64 of ``spec`` with each list of units removed (gates folded).

    Latency depends on the architecture, not on the weight values, so each net is rebuilt
    from the spec; identical architectures are timed once.
    """
    from ..measure.compare import time_models

    keys = [",".join(sorted(e)) for e in erased]
    nets: dict[str, nn.Module] = {}
    for key, names in zip(keys, erased):
        if key not in nets:
            net = build(spec)
            erase_units(net, names)
            fold_gates(net)  # as deployed: no gate multiply
            nets[key] = net
    rows, _ = time_models(nets, shape, batch_sizes=(STEP_LATENCY_BATCH,), runtimes=("eager",),
                          devices=["cpu"], warmup=STEP_LATENCY_WARMUP,
                          repeats=STEP_LATENCY_REPEATS)
    return [round(rows[0]["ms"][k], 4) for k in keys]
