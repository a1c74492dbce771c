"""Pickle-free model checkpoints: ``model.safetensors`` + ``arch.json`` in a run directory.

``save(model, run_dir)`` writes the weights with safetensors and the architecture spec as
JSON, each atomically; ``load(run_dir)`` rebuilds the model from the spec alone (no user code,
no unpickling) and loads the weights with ``strict=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .errors import UserError
from .io import atomic_write_bytes, atomic_write_json, read_json
from .models import build, spec_of

MODEL_FILE = "model.safetensors"
ARCH_FILE = "arch.json"


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save(model: nn.Module, run_dir: str | os.PathLike,
         metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.safetensors`` and ``arch.json`` into ``run_dir`` (created if needed).

    Weights go first and the spec last, each atomically, so ``arch.json`` never describes
    weights that are not on disk yet.
    """
    run_dir = Path(run_dir)
    spec = spec_of(model)
    data = safetensors.torch.save(state_tensors(model), metadata={"format": "resprune",
                                                                  **(metadata or {})})
    atomic_write_bytes(run_dir / MODEL_FILE, data)
    atomic_write_json(run_dir / ARCH_FILE, spec)
    return run_dir


def load_spec(run_dir: str | os.PathLike) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    if not (run_dir / ARCH_FILE).is_file():
        raise UserError(f"{run_dir} is not a resprune run directory (no {ARCH_FILE}); "
                        "pass a directory written by 'resprune train' or resprune.save()")
    return read_json(run_dir / ARCH_FILE, "architecture file")


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        return safetensors.torch.load(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise UserError(f"weights file {path} is not a valid safetensors file ({e}); "
                        "it is corrupt or was not written by resprune") from None


def load(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved in ``run_dir`` and load its weights (no pickle involved)."""
    run_dir = Path(run_dir)
    model = build(load_spec(run_dir))
    state = load_state(run_dir / MODEL_FILE)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f"weights in {run_dir / MODEL_FILE} do not match {ARCH_FILE}: "
                        f"{' '.join(lines[1:3])[:300]}") from None
    return model.to(device)
