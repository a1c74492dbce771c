"""Run state: the one mechanism by which implode, vacl and compress runs resume.

Every resumable run keeps what it has decided so far in **one** JSON file, ``state.json``,
written atomically (temporary file, fsync, rename) after every finished piece of work, with a
format version and the kind of run::

    {"format": 1, "kind": "implode" | "vacl" | "compress", "phase": ..., ...}

Weights are always written before the state that points at them, so a process killed between
the two leaves a state naming the previous, complete piece. A training (``resprune train``, or
a stage's training in its own subdirectory) keeps its tensors (weights, optimizer, RNG) in
``train_state.pt`` instead (:mod:`resprune.train.state`), written last in each epoch.

Run directories of resprune 0.1 before this module kept the state of an implosion in
``implosion_state.json`` and of VACL in ``pipeline_state.json``; they are still read, and the
next write moves the state into ``state.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .io import atomic_write_json, read_json, remove

STATE_FILE = "state.json"
#: the trainer's checkpoint (tensors: weights, optimizer, RNG states)
TRAIN_STATE_FILE = "train_state.pt"
#: the command's resolved options (CLI runs), reused on ``--resume``
COMMAND_FILE = "command.json"
FORMAT = 1
KINDS = ("implode", "vacl", "compress")
#: where older run directories kept the state of each kind
LEGACY_FILES = {"implode": "implosion_state.json", "vacl": "pipeline_state.json"}
#: every state file name a run directory may hold
STATE_FILES = (STATE_FILE, TRAIN_STATE_FILE, *LEGACY_FILES.values())


def state_path(run_dir: str | Path, kind: str) -> Path | None:
    """The file holding the state of a ``kind`` run in ``run_dir`` (None: there is none)."""
    run_dir = Path(run_dir)
    for name in (STATE_FILE, LEGACY_FILES.get(kind)):
        if name and (run_dir / name).is_file():
            return run_dir / name
    return None


def read_state(run_dir: str | Path, kind: str) -> dict[str, Any] | None:
    """The state of the ``kind`` run in ``run_dir``, checked; ``None`` when it has none."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}")
    path = state_path(run_dir, kind)
    if path is None:
        return None
    state = read_json(path, "run state")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else "?"
        raise UserError(f"{path} is not a run state this resprune can read (format {found}); "
                        "start a new run")
    found_kind = state.get("kind", kind if path.name == LEGACY_FILES.get(kind) else None)
    if found_kind != kind:
        raise UserError(f"{path.parent} holds a '{found_kind}' run, not a '{kind}' run; "
                        f"resume it with 'resprune {found_kind} ... --resume'")
    state["kind"] = kind
    return state


def write_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (which names its ``kind``) atomically as ``run_dir/state.json``."""
    kind = state.get("kind")
    if kind not in KINDS:
        raise ValueError(f"a run state needs a kind in {KINDS}, got {kind!r}")
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / STATE_FILE, {**state, "format": FORMAT})
    legacy = LEGACY_FILES.get(kind)
    if legacy:
        remove(run_dir / legacy)


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of the state_dict (names, dtypes, shapes, bytes): identifies a start model."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def config_json(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON types (tuples become lists), as stored in a run state."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def comparable(stored: dict[str, Any], defaults: dict[str, Any],
               free: Iterable[str]) -> dict[str, Any]:
    """A stored config as a resume compares it: options added after the run was started count
    with their ``defaults``; the ``train`` options in ``free`` (how to run, not what to
    compute) are left out."""
    config = {**defaults, **stored}
    train = config.get("train")
    if isinstance(train, dict):
        free = set(free)
        train = {k: v for k, v in train.items() if k not in free}
    return {**config, "train": train}

