"""Read a checkpoint file a user already has, without ever executing code from it.

``.pt``/``.pth``/``.th``/``.tar``/``.bin`` files are read with ``torch.load(weights_only=True)``:
only tensors and plain containers are rebuilt, so a file whose pickle would import or call
anything is refused before anything runs. ``.safetensors`` files are read with safetensors.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from ..errors import UserError

TORCH_SUFFIXES = (".pt", ".pth", ".th", ".tar", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> tuple[Any, dict[str, str]]:
    """``(object, file metadata)`` of a checkpoint file; never unpickles code.

    The object is whatever the file holds (a state_dict, or a dict wrapping one);
    :func:`resprune.importing.keys.unwrap` finds the state_dict in it. The metadata is the
    safetensors header's ``__metadata__`` (empty for torch files).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint file {path} does not exist")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a file; pass a .pt/.pth/.th/.tar or "
                        ".safetensors file")
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            return safetensors.torch.load(path.read_bytes()), meta
        except Exception as e:  # noqa: BLE001 - safetensors raises several types
            raise UserError(f"{path} is not a valid safetensors file ({_first(e)})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"refusing {path}: it needs pickled code to load, which resprune never "
                        f"runs; nothing was executed ({_first(e)}). Re-save its state_dict "
                        "with torch.save(model.state_dict(), ...) or as .safetensors") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
            AttributeError, TypeError, KeyError) as e:
        raise UserError(f"{path} is not a readable PyTorch checkpoint: it is truncated, corrupt "
                        f"or another kind of file ({_first(e)})") from None
    return obj, {}


def _first(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line[:160]
