"""An implosion run in the library: :func:`implode` plus the run directory around it.

:func:`run_implosion` is what ``resprune implode`` and the implode stage of
:func:`resprune.compress` do: measure the input on the validation and test splits, run the
resumable loop (:func:`resprune.implosion.implode`, which owns ``state.json`` and the step
checkpoints), measure the result, and write ``summary.json`` (kind ``implode``; fields:
:mod:`resprune.implosion.summary`) and ``report.md``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from torch import nn

from .. import __version__, distributed
from ..data import resolve_loaders
from ..errors import UserError
from ..io import atomic_write_json
from ..measure._device import resolve_device
from ..measure.summary import measure_model
from ..models import ResNet, spec_of
from ..report.implosion import write_report
from ..train.run import RunResult
from .config import ImplosionConfig
from .gates import is_erasable, residual_units, unit_weight_layers
from .loop import implode
from .summary import BASE_KEYS, implosion_fields

log = logging.getLogger("resprune.implosion")


def run_implosion(model: nn.Module, data: Any, config: ImplosionConfig | None = None, *,
                  out: str | Path, resume: bool = False, distill=None, progress: bool = True,
                  epoch_size: int | None = None, input_shape: tuple[int, ...] | None = None,
                  source: str | Path | None = None,
                  summary_extra: dict[str, Any] | None = None) -> RunResult:
    """Erase residual units of ``model`` while validation accuracy holds; write ``out``.

    ``data``: a :class:`resprune.data.DataBundle` or ``(train, val, test)`` loaders (see
    :func:`resprune.data.resolve_loaders`; ``epoch_size`` applies to a bundle's training
    loader). ``resume``: continue the run in ``out``. ``source`` (e.g. the input run
    directory) is recorded as ``base.run``; ``summary_extra`` is merged into
    ``summary.json``. Returns the imploded model and its summary.
    """
    config = (config or ImplosionConfig()).validate()
    started = time.time()
    t = config.train
    device = resolve_device(t.device)
    loaders, shape, info = resolve_loaders(
        data, batch_size=t.batch_size, device=device, seed=t.seed,
        channels_last=t.channels_last, epoch_size=epoch_size, input_shape=input_shape)
    n_val = getattr(loaders.val, "num_samples", None)
    if n_val == 0:
        raise UserError("the validation split is empty; implode accepts or rolls back every "
                        "step on it (hold out a validation split)")
    if n_val:
        log.info("validation split of %d images: one image = %.3g points; tolerance %g "
                 "points = %d images", n_val, 100 / n_val, config.tolerance,
                 int(config.tolerance * n_val / 100 + 1e-9))
    out = Path(out)
    spec = spec_of(model) if isinstance(model, ResNet) else None
    units = [{"name": n, "erasable": is_erasable(u), "weight_layers": unit_weight_layers(u)}
             for n, u in residual_units(model)]
    new_gates = sum(1 for _, u in residual_units(model)
                    if is_erasable(u) and getattr(u, "gate", None) is None)
    evals = {"val": loaders.val, "test": loaders.test}
    measured = measure_model(model, shape, evals, device=device, precision=t.precision)
    base = {"run": None if source is None else str(source),
            **{k: measured.get(k) for k in BASE_KEYS}}
    result = implode(model, loaders.train, loaders.val, config, out, resume=resume,
                     input_shape=shape, progress=progress, distill=distill)
    summary: dict[str, Any] = {
        "kind": "implode", "model": spec["arch"] if spec else type(model).__name__,
        "resprune": __version__, "world_size": distributed.world_size(),
        "input_shape": list(shape), "data": info, "config": config.to_dict()}
    summary.update(summary_extra or {})
    summary["seconds"] = round(time.time() - started, 2)  # the whole run, not the caller's
    summary.update(measure_model(result.model, shape, evals, device=device,
                                 precision=t.precision))
    summary.update(implosion_fields(result, base, units, spec, shape, new_gates))
    atomic_write_json(out / "summary.json", summary)
    write_report(out, summary)
    return RunResult(model=result.model, summary=summary, run_dir=out)
