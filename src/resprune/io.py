"""Atomic, pickle-free file I/O shared by every part of resprune.

Every file resprune writes goes through :func:`atomic_write_bytes`: the data is written to a
temporary file in the same directory, flushed and fsync'ed, then renamed over the target. A
process killed at any moment leaves either the previous file or the new one, never a torn one.

Under torchrun every write and removal here is a collective (:mod:`resprune.distributed`):
all processes call it, rank 0 alone touches the disk, and no process goes on before the file
is there. ``collective=False`` writes from the calling process only (caches).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .errors import UserError

# Fault injection for the kill campaign (benchmarks/kill_campaign.py): with this variable set
# to N, the process SIGKILLs itself in the middle of its N-th atomic write (half the data in
# the temporary file, nothing renamed), the worst moment a crash can hit a checkpoint.
KILL_AT_WRITE_ENV = "RESPRUNE_FAULT_KILL_AT_WRITE"
_writes = 0


def _maybe_die_mid_write(f: Any, data: bytes) -> None:
    global _writes
    target = os.environ.get(KILL_AT_WRITE_ENV)
    if not target:
        return
    _writes += 1
    if _writes == int(target):
        f.write(data[: len(data) // 2])
        f.flush()
        os.kill(os.getpid(), 9)


@contextlib.contextmanager
def _rank0_only(collective: bool) -> Iterator[bool]:
    """Yield whether this process touches the disk; with several processes, all of them wait
    before (so every earlier read saw the old state) and after (so every later read sees the
    new one)."""
    if not (collective and distributed.enabled()):
        yield True
        return
    distributed.barrier()
    try:
        yield distributed.is_main()
    finally:
        distributed.barrier()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *,
                       collective: bool = True) -> None:
    with _rank0_only(collective) as writes:
        if writes:
            _write_bytes(Path(path), data)


def remove(*paths: str | os.PathLike) -> None:
    """Delete files (missing ones are fine), as one collective step."""
    with _rank0_only(True) as writes:
        if writes:
            for p in paths:
                Path(p).unlink(missing_ok=True)


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a directory and everything in it (a missing one is fine), as one collective."""
    with _rank0_only(True) as writes:
        if writes:
            shutil.rmtree(path, ignore_errors=True)


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; use the usual file mode
        with os.fdopen(fd, "wb") as f:
            _maybe_die_mid_write(f, data)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str, *, collective: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), collective=collective)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, collective: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n",
                      collective=collective)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e}); the file is corrupt") from None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Save tensors/containers with torch.save, atomically. Load with :func:`safe_torch_load`."""
    import io as _io

    buf = _io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: str | os.PathLike, what: str = "training state") -> Any:
    """Load a torch.save file with ``weights_only=True``: tensors and plain containers only.

    A file crafted to run code when unpickled is refused with a :class:`UserError`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means an unusable file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"refusing to load {what} {path}: it is corrupt or holds something other than "
            f"tensors and plain containers ({first[:160]})"
        ) from None
