"""Meeting a latency target on the measured model instead of on the table's prediction.

A latency table predicts a pruned model's time as the sum of its convolutions timed alone
(:mod:`resprune.measure.latency_table`). Everything else the runtime does (additions, ReLUs
between blocks, shortcuts, memory traffic between layers) hides inside those timings, so the
prediction overstates what pruning saves: on the converged ResNet-56 in onnxruntime a
selection predicted to save 50 % of the time saved 35 % when measured
(``docs/vacl.md``). With ``latency_check="measured"`` :func:`fit_goal` closes the loop: it
prunes a copy at the table goal, times it against the input (interleaved, the table's runtime
and batch size), and corrects the goal until the *measured* reduction meets the target:

- while only one side of the target has been seen, the next goal scales the last one by
  target / measured (the table's error is close to a factor);
- once one goal meets the target and another misses it, bisection between them;
- it stops when a goal meets the target by at most ``tolerance`` more, after ``rounds``
  timings, or when the goal cannot rise further; it returns the selection of the smallest goal
  that met the target (else the one that came closest: the target is then not reached).

Timing is noisy: each round takes the median of ``repeats`` interleaved runs, so the input
and the candidate see the same machine load, and (``confirm``) a candidate that meets the
target is timed a second time and meets it only if both timings do: the less favourable one
decides. Without it, one fast timing under load passed a candidate that missed a 30 % target
on ResNet-56 (``benchmarks/results/latency_target.md``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

CHECKS = ("table", "measured")
CHECK_HELP = ("what a latency target (--target-latency-reduction, --target-latency) is met "
              "on: table (the per-layer table's prediction, no timing) or measured (prune a "
              "copy, time it against the input in --latency-runtime at --latency-batch, "
              "interleaved, and correct the table goal until the measured reduction meets the "
              "target; a few whole-model timings)")
ROUNDS = 6
TOLERANCE = 0.02
GOAL_MAX = 0.999
REPEATS = 7

#: ``timer(input_model, pruned_model) -> (input_ms, pruned_ms)``
Timer = Callable[[nn.Module, nn.Module], "tuple[float, float]"]


def model_timer(table: Any, input_shape: Sequence[int], repeats: int = REPEATS) -> Timer:
    """A :data:`Timer` in the table's runtime and batch size with the current thread count:
    both models in deployment form (:func:`resprune.deploy`), timed interleaved (median of
    ``repeats`` rounds after one warm-up round). The input is exported once and kept while
    the timer is given the same input model."""
    import torch

    from ..export import deploy
    from ..measure._device import synchronize
    from ..measure.compare import interleaved_medians, prepare

    cuda = table.runtime == "cuda"
    runtime, device = ("eager", torch.device("cuda")) if cuda else (table.runtime,
                                                                   torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((table.batch, *input_shape), generator=gen).to(device)
    held: dict[str, Any] = {}

    def timer(base: nn.Module, pruned: nn.Module) -> tuple[float, float]:
        if held.get("model") is not base:
            held.update(model=base, run=prepare(deploy(base, input_shape), input_shape,
                                                runtime, device.type))
        fns = {"input": held["run"],
               "pruned": prepare(deploy(pruned, input_shape), input_shape, runtime,
                                 device.type)}
        ms = interleaved_medians({k: (lambda f=f: f(x)) for k, f in fns.items()}, 1, repeats,
                                 lambda: synchronize(device))
        return float(ms["input"]), float(ms["pruned"])
    return timer


def fit_goal(pick: Callable[[float], list[int]], time_pick: Callable[[list[int]], tuple],
             target: Callable[[float], float], start: float, rounds: int = ROUNDS,
             tolerance: float = TOLERANCE, confirm: bool = True,
             ) -> tuple[list[int], dict[str, Any]]:
    """The selection whose measured latency reduction meets the target (module docstring).

    ``pick(goal)``: the selection (group indices) for a predicted-reduction goal;
    ``time_pick(chosen)``: ``(input_ms, pruned_ms)`` of the input and of a copy without
    ``chosen``; ``target(input_ms)``: the reduction the target asks for, given the input's
    measured time (a fixed fraction, or ``1 - MS / input_ms`` for an absolute target);
    ``start``: the first goal; ``confirm``: time a candidate that meets the target twice.
    Returns ``(chosen, info)``; ``info`` holds ``goal``, ``measured_reduction``, ``reached``
    and every round (each with the timing that decided it and ``timings``, all of them).
    """
    def timing(chosen: list[int]) -> dict[str, float]:
        base_ms, ms = time_pick(chosen)
        return {"input_ms": base_ms, "pruned_ms": ms, "target_reduction": target(base_ms),
                "measured_reduction": 1 - ms / base_ms if base_ms > 0 else 0.0}

    def margin(t: dict[str, float]) -> float:
        return t["measured_reduction"] - t["target_reduction"]

    tried: list[dict[str, Any]] = []
    met: tuple[float, list[int], dict[str, Any]] | None = None
    near: tuple[float, list[int], dict[str, Any]] | None = None
    lo, hi = None, None  # highest goal that missed, lowest that met
    goal = min(max(start, 0.0), GOAL_MAX)
    for _ in range(max(1, rounds)):
        chosen = pick(goal)
        timings = [timing(chosen)]
        if confirm and margin(timings[0]) >= 0:
            timings.append(timing(chosen))
        decided = min(timings, key=margin)
        row = {"goal": goal, "groups": len(chosen), **decided, "timings": timings}
        tried.append(row)
        got, want = decided["measured_reduction"], decided["target_reduction"]
        if got >= want:
            if met is None or goal < met[0]:
                met = (goal, chosen, row)
            hi = goal if hi is None else min(hi, goal)
            if got <= want + tolerance:
                break
        else:
            if near is None or got > near[2]["measured_reduction"]:
                near = (goal, chosen, row)
            lo = goal if lo is None else max(lo, goal)
        if lo is not None and hi is not None:
            nxt = (lo + hi) / 2
        elif got > 0:
            nxt = goal * want / got
        else:
            nxt = (goal + GOAL_MAX) / 2
        nxt = min(max(nxt, 0.0), GOAL_MAX)
        if abs(nxt - goal) < 1e-4:
            break
        goal = nxt
    best = met if met is not None else near
    assert best is not None
    return best[1], {"check": "measured", "goal": best[0],
                     "measured_reduction": best[2]["measured_reduction"],
                     "input_ms": best[2]["input_ms"], "pruned_ms": best[2]["pruned_ms"],
                     "reached": met is not None, "rounds": tried}


def pruned_copy(model: nn.Module, members: Sequence[Any]) -> nn.Module:
    """A copy of ``model`` with ``members`` removed (the model is left as it is)."""
    from .prune import remove_members

    twin = copy.deepcopy(model)
    remove_members(twin, members)
    return twin
