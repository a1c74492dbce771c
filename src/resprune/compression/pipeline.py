"""``resprune.compress()``: depth (implosion) and width (VACL) in one resumable pipeline.

::

    import resprune
    from resprune.data import load_dataset

    model = resprune.load("runs/resnet56")
    data = load_dataset("cifar10", "data/cifar10", val_fraction=0.1)
    result = resprune.compress(model, data, resprune.CompressConfig(
        target_params_reduction=0.85, per_step=2, tolerance=0.5, retrain_epochs=2,
        sparse_epochs=10, finetune_epochs=5, finetune_final_epochs=10), out="runs/r56-c")
    result.model, result.summary["params_removed_pct"]

Each stage is the library's own run function, writing a normal run directory
``OUT/stages/<i>-<name>/`` whose input is the previous stage's model (the model passed in for
the first): ``train`` (:func:`resprune.train.train_run`, only when listed: trains the model
passed in), ``implode`` (:func:`resprune.implosion.run_implosion`), ``vacl``
(:func:`resprune.vacl.run_pipeline`, removing the share of the budget the earlier stages left),
``finetune`` (:func:`resprune.train.train_run` for ``finetune_final_epochs``). A stage whose
directory holds ``summary.json`` is done; an unfinished one continues by its own resume; so
``resume=True`` continues a pipeline killed between or within stages, on the CPU bit for bit.
``OUT/state.json`` (kind ``compress``) records the stages and the input's fingerprint. The
final model is saved into ``OUT``; ``summary.json`` fields: :mod:`resprune.compression.summary`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import load, save
from ..data import resolve_loaders
from ..errors import UserError
from ..implosion import run_implosion
from ..io import atomic_write_json, remove_tree
from ..measure._device import resolve_device
from ..measure.summary import measure_model, sizes
from ..report.compress import write_report
from ..runs import read_summary
from ..runstate import FORMAT, fingerprint, read_state, write_state
from ..train import train_run
from ..vacl import run_pipeline
from .config import CompressConfig
from .summary import BASE_KEYS, compress_summary

log = logging.getLogger("resprune.compress")
KIND = "compress"
STAGES_DIR = "stages"


@dataclass
class CompressResult:
    """The compressed ``model``, the ``summary`` written to ``summary.json``, and the stage
    summaries in order (``stages``: ``(name, run directory, summary)``)."""

    model: nn.Module
    summary: dict[str, Any]
    run_dir: Path
    stages: list[tuple[str, Path, dict[str, Any]]] = field(default_factory=list)


def vacl_share(target: float, base: float, current: float) -> float:
    """The fraction of ``current`` to remove so that ``1 - target`` of ``base`` is left.

    ``r = 1 - (1 - target) * base / current``, clamped at 0 (earlier stages already removed
    enough: VACL removes nothing). Below 1 for any ``target`` < 1.
    """
    if current <= 0:
        return 0.0
    return max(0.0, 1.0 - (1.0 - target) * base / current)


def compress(model: nn.Module, data: Any, config: CompressConfig | None = None, *,
             out: str | Path, resume: bool = False, distill=None, progress: bool = True,
             input_shape: tuple[int, ...] | None = None, source: str | Path | None = None,
             summary_extra: dict[str, Any] | None = None) -> CompressResult:
    """Compress ``model`` by the stages of ``config`` into the run directory ``out``.

    ``data``: a :class:`resprune.data.DataBundle` or your own ``(train, val, test)`` loaders
    (:func:`resprune.data.resolve_loaders`; every decision uses ``val``, ``test`` is only
    reported). ``distill``: a :class:`resprune.train.Distillation` every stage but ``train``
    learns from (typically the unpruned input). ``resume``: continue the pipeline in ``out``
    (pass the same model and config). ``source`` (the input's run directory) is recorded as
    ``base.run``; ``summary_extra`` is merged into the pipeline's ``summary.json`` (the CLI
    records its options and data there; each stage's summary records the stage's config).
    """
    config = (config or CompressConfig()).validate()
    t = config.train
    loaders, shape, info = resolve_loaders(
        data, batch_size=t.batch_size, device=resolve_device(t.device), seed=t.seed,
        channels_last=t.channels_last, epoch_size=config.epoch_size, input_shape=input_shape)
    out = Path(out)
    stages = list(config.stages)
    state = _open(out, model, config, resume)
    extra = {"data": info, **(summary_extra or {})}
    stage_extra = {"data": extra["data"]}  # each stage records its own config
    run_kw = dict(progress=progress, input_shape=shape)

    current: nn.Module | None = model
    prev_dir: Path | None = None if source is None else Path(source)
    base_sizes = None if stages[0] == "train" else _base_sizes(config, model, shape, out)
    if stages[0] == "finetune" and "base" not in state:  # no stage measures the input
        m = measure_model(model, shape, {"val": loaders.val, "test": loaders.test},
                          device=resolve_device(t.device), precision=t.precision)
        state["base"] = {"run": None if source is None else str(source),
                         **{k: m.get(k) for k in BASE_KEYS}}
        write_state(out, state)
    done: list[tuple[str, Path, dict[str, Any]]] = []
    for i, name in enumerate(stages, 1):
        where = out / STAGES_DIR / f"{i}-{name}"
        if (where / "summary.json").is_file():
            log.info("stage %d/%d %s: done (%s)", i, len(stages), name, where)
        else:
            model_in = current if current is not None else load(prev_dir)
            resuming = where.is_dir() and any(where.iterdir())
            log.info("stage %d/%d %s -> %s%s", i, len(stages), name, where,
                     " (resuming)" if resuming else "")
            _run_stage(name, config, model_in, loaders, where, resuming,
                       None if name == "train" else distill, prev_dir, base_sizes, shape,
                       stage_extra, run_kw)
        done.append((name, where, read_summary(where)))
        current, prev_dir = None, where
        if name == "train":
            base_sizes = _base_sizes(config, load(where), shape, out)

    final = load(prev_dir)
    save(final, out, metadata={"kind": KIND})
    base = _base(done, source, state)
    summary = compress_summary(out, done, base, config.budget(),
                               extra.get("config") or config.to_dict(),
                               (base_sizes or {}).get("latency"))
    if "data" in extra and summary.get("data") is None:
        summary["data"] = extra["data"]
    atomic_write_json(out / "summary.json", summary)
    write_report(out, summary)
    return CompressResult(model=final, summary=summary, run_dir=out, stages=done)


def _open(out: Path, model: nn.Module, config, resume: bool) -> dict[str, Any]:
    state = read_state(out, KIND)
    fp = fingerprint(model)
    if state is None:
        if not resume and out.is_dir() and (out / STAGES_DIR).is_dir():
            raise UserError(f"{out} already holds a compress run; pass resume=True (--resume) "
                            "to continue it or choose a new run directory")
        out.mkdir(parents=True, exist_ok=True)
        state = {"format": FORMAT, "kind": KIND, "stages": list(config.stages),
                 "input_fingerprint": fp}
        write_state(out, state)
        return state
    if not resume:
        raise UserError(f"{out} already holds a compress run; pass resume=True (--resume) to "
                        "continue it or choose a new run directory")
    if state.get("stages") != list(config.stages):
        raise UserError(f"{out} runs the stages {','.join(state.get('stages') or [])}; resume "
                        "it with the same stages")
    if state.get("input_fingerprint") not in (None, fp):
        raise UserError(f"the model passed to compress is not the one the run in {out} "
                        "started from; pass the same input to resume")
    return state


def _run_stage(name: str, config, model: nn.Module, loaders, where: Path, resuming: bool,
               distill, prev_dir: Path | None, base_sizes, shape, extra, run_kw) -> None:
    """Run one stage into ``where`` (continuing it when ``resuming``)."""
    if not resuming:  # unconditional: a directory another process just made is no reason
        remove_tree(where)
    where.mkdir(parents=True, exist_ok=True)
    common = dict(out=where, resume=resuming, distill=distill, summary_extra=extra, **run_kw)
    if name in ("train", "finetune"):
        train_run(model, loaders, config.stage_train(name), epoch_size=config.epoch_size,
                  **common)
    elif name == "implode":
        run_implosion(model, loaders, config.implosion_config(), epoch_size=config.epoch_size,
                      source=prev_dir, **common)
    else:
        run_pipeline(model, loaders, config.vacl_config(_vacl_rule(config, base_sizes, model,
                                                                   shape, where)),
                     source=prev_dir, **common)


def _base_sizes(config, model: nn.Module, shape, out: Path) -> dict[str, float]:
    """Params and MACs of the pipeline's input; with a latency budget also its latency in
    the budget's runtime (the model time of its latency table, kept in ``out``)."""
    got: dict[str, float] = dict(sizes(model, shape))
    if config.budget()["mode"] == "latency":
        from ..measure import latency_table

        got["latency"] = latency_table.run_table(out, model, shape, config.latency_runtime,
                                                 config.latency_batch).model_ms
    return got


def _vacl_rule(config, base_sizes: dict[str, float] | None, model: nn.Module,
               shape, where: Path) -> dict[str, float]:
    """The vacl stage's pruning rule, from the pipeline's budget. A latency budget is
    turned into a reduction of the stage input's latency, as its own table (measured into
    the stage directory, where the stage finds it) has it."""
    b = config.budget()
    if b.get("targets"):  # params, MACs or both
        assert base_sizes is not None
        now = sizes(model, shape)
        return {f"target_{m}_reduction": vacl_share(r, base_sizes[m], now[m])
                for m, r in b["targets"].items()}
    if b["mode"] == "latency":
        assert base_sizes is not None
        from ..measure import latency_table

        now = {"latency": latency_table.run_table(
            where, model, shape, config.latency_runtime, config.latency_batch).model_ms}
        target = b.get("target_reduction")
        if target is None:  # an absolute goal: the reduction of the base it means
            target = max(0.0, 1 - b["target_ms"] / base_sizes["latency"])
        return {"target_latency_reduction": vacl_share(target, base_sizes["latency"],
                                                       now["latency"])}
    return {k: v for k, v in b.items() if k != "mode"}


def _base(done, source, state: dict[str, Any]) -> dict[str, Any]:
    """The compress input on the stages' splits: the trained base of a train stage, the
    first stage's ``base`` (implode and vacl measure their input), else the state's."""
    name, where, s = done[0]
    if name == "train":
        return {"run": str(where), **{k: s.get(k) for k in BASE_KEYS}}
    if isinstance(s.get("base"), dict):
        return {"run": None if source is None else str(source),
                **{k: s["base"].get(k) for k in BASE_KEYS}}
    return state["base"]
