"""On-disk state of an implosion run, so a killed run resumes from its last finished step.

Layout of ``run_dir``::

    state.json                  what is decided so far (config, baseline, step history, phase;
                                :mod:`resprune.runstate`)
    steps/step_000/             the starting net (gated, adapted): model.safetensors [+ arch.json]
    steps/step_003/             the last accepted net (earlier steps' weights are deleted)
    steps/step_00K/train/       the retraining run of step K (metrics.jsonl, ...)
    steps/final/                after the optional final retrain
    model.safetensors, arch.json   the finished network (gates folded unless fold=False)

Weights are written before the state that points at them, each file atomically; a process
killed between the two leaves a state that still names the previous, complete step.
``arch.json`` is written for zoo models only; a user model is rebuilt on resume from the
model passed to ``implode`` (same erasures replayed, then the weights loaded strictly).
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
from torch import nn

from ..checkpoint import ARCH_FILE, MODEL_FILE, load_state, save, state_tensors
from ..errors import UserError
from ..io import atomic_write_bytes, remove
from ..models import ResNet


def step_dir(run_dir: Path, step: int | str) -> Path:
    name = step if isinstance(step, str) else f"step_{step:03d}"
    return run_dir / "steps" / name


def save_weights(model: nn.Module, directory: Path) -> None:
    """``model.safetensors`` (and ``arch.json`` for a zoo model) in ``directory``."""
    if isinstance(model, ResNet):
        save(model, directory, metadata={"kind": "implode"})
    else:
        data = safetensors.torch.save(state_tensors(model), metadata={"format": "resprune"})
        atomic_write_bytes(directory / MODEL_FILE, data)


def load_weights(model: nn.Module, directory: Path) -> None:
    """Load ``directory/model.safetensors`` into ``model`` (strict, exact)."""
    state = load_state(directory / MODEL_FILE)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = [ln.strip() for ln in str(e).splitlines() if ln.strip()][1:2]
        raise UserError(f"the weights in {directory / MODEL_FILE} do not fit the model passed "
                        f"to implode ({' '.join(first)[:200]}); resume with the same starting "
                        "model") from None


def remove_weights(directory: Path) -> None:
    """Delete a superseded step's weights (its training logs stay)."""
    remove(directory / MODEL_FILE, directory / ARCH_FILE)
