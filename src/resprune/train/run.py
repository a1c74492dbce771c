"""A training run in the library: train a model and write a complete run directory.

:func:`train_run` is what ``resprune train`` and the fine-tuning stage of
:func:`resprune.compress` do: train with :class:`~resprune.train.Trainer` (resumable from its
``train_state.pt``), save the model, measure it (:func:`resprune.measure.measure_model`) and
write ``summary.json`` (kind ``train``) and ``report.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .. import __version__, distributed
from ..checkpoint import save
from ..data import resolve_loaders
from ..io import atomic_write_json
from ..measure._device import resolve_device
from ..measure.summary import measure_model
from ..models import spec_of
from ..report.train import write_report
from ..runstate import TRAIN_STATE_FILE
from .config import TrainConfig
from .trainer import Trainer


@dataclass
class RunResult:
    """A finished run: its ``model``, the ``summary`` written to ``summary.json`` and the
    ``run_dir``; ``history`` holds the epoch records where there are any."""

    model: nn.Module
    summary: dict[str, Any]
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def train_run(model: nn.Module, data: Any, config: TrainConfig, *, out: str | Path,
              resume: bool = False, distill=None, progress: bool = True,
              epoch_size: int | None = None, input_shape: tuple[int, ...] | None = None,
              summary_extra: dict[str, Any] | None = None) -> RunResult:
    """Train ``model`` (in place) for ``config.epochs`` into the run directory ``out``.

    ``data``: a :class:`resprune.data.DataBundle` or ``(train, val, test)`` loaders (see
    :func:`resprune.data.resolve_loaders`). ``resume``: continue the training in ``out`` from
    its last finished epoch (a run killed before its first epoch ended starts over).
    ``distill``: a :class:`~resprune.train.Distillation`. ``summary_extra`` is merged into
    ``summary.json``.
    """
    config.validate()
    started = time.time()
    device = resolve_device(config.device)
    loaders, shape, info = resolve_loaders(
        data, batch_size=config.batch_size, device=device, seed=config.seed,
        channels_last=config.channels_last, epoch_size=epoch_size, input_shape=input_shape)
    out = Path(out)
    trainer = Trainer(model, loaders.train, loaders.val, config, run_dir=out,
                      progress=progress, distill=distill)
    history = trainer.fit(resume=resume and (out / TRAIN_STATE_FILE).is_file())
    model = trainer.model
    save(model, out)
    summary: dict[str, Any] = {"kind": "train", "model": spec_of(model)["arch"],
                               "resprune": __version__, "input_shape": list(shape),
                               "world_size": distributed.world_size(),
                               "data": info, "seconds": round(time.time() - started, 2),
                               "config": config.to_dict()}
    summary.update(summary_extra or {})
    summary.update(measure_model(model, shape, {"val": loaders.val, "test": loaders.test},
                                 device=device, precision=config.precision))
    summary["epochs"] = len(history)
    summary["seconds"] = round(sum(r.get("seconds", 0.0) for r in history), 2)
    atomic_write_json(out / "summary.json", summary)
    write_report(out, summary, history)
    return RunResult(model=model, summary=summary, run_dir=out, history=history)
