"""On-disk state of an implosion run, so a killed run resumes from its last finished step.

Layout of ``run_dir``::

    implosion_state.json        what is decided so far (config, baseline, step history, phase)
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

import hashlib
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ..checkpoint import ARCH_FILE, MODEL_FILE, load_state, save, state_tensors
from ..errors import UserError
from ..io import atomic_write_bytes, atomic_write_json, read_json
from ..models import ResNet

STATE_FILE = "implosion_state.json"
STATE_FORMAT = 1


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


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of the state_dict (names, dtypes, shapes, bytes): identifies the start model."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_state(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    state = read_json(path, "implosion state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"{path} is not an implosion state this resprune can read "
                        f"(format {state.get('format') if isinstance(state, dict) else '?'})")
    return state


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_json(run_dir / STATE_FILE, state)


def remove_weights(directory: Path) -> None:
    """Delete a superseded step's weights (its training logs stay)."""
    for name in (MODEL_FILE, ARCH_FILE):
        try:
            (directory / name).unlink()
        except FileNotFoundError:
            pass
