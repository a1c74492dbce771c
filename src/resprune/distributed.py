"""Several processes, one run: what resprune needs of ``torch.distributed``.

Every command runs unchanged under ``torchrun``::

    torchrun --nproc-per-node 8 -m resprune train --config ... --out runs/x

:func:`setup` (called by the command line; call it yourself in a script, or create the
process group yourself) starts the process group from torchrun's environment: NCCL when the
run uses CUDA (each process on ``cuda:LOCAL_RANK``), gloo on the CPU. Without torchrun
(``WORLD_SIZE`` unset or 1) nothing changes and every helper here is a no-op.

The rules that keep N processes one run:

- **Global batch.** ``batch_size`` is the batch of one optimizer step over all processes;
  each process trains on its own ``batch_size / N`` slice of every batch (resprune's loaders
  shard themselves), so the learning rate, the schedule and the number of steps do not depend
  on N, and a run may be resumed with another N.
- **Same code, same order.** Every process runs every line; what differs is only which
  samples it sees. Validation sums are all-reduced (:func:`all_reduce_sum`), so every process
  gets the same number; decisions (which units to erase, which groups to prune, a latency
  table) are made on rank 0 and sent to the others (:func:`broadcast_object`).
- **Rank 0 writes.** Every file write and removal of :mod:`resprune.io` is a collective:
  all processes arrive, rank 0 writes, all continue. Reads before a write see the old file on
  every rank, reads after it the new one. Creating a directory is not a collective, so no
  branch may depend on whether a directory exists (only on the files in it). With several
  machines the run directory must be on a file system all of them see.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import UserError

T = TypeVar("T")
#: environment variables torchrun sets for every process
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def enabled() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if enabled() else 1


def rank() -> int:
    return dist.get_rank() if enabled() else 0


def is_main() -> bool:
    """True on the process that writes files, logs and progress bars (rank 0)."""
    return rank() == 0


def launched() -> bool:
    """True when torchrun (or an equivalent launcher) started this process with N > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | torch.device | None = None, timeout_s: float = 1800) -> bool:
    """Start the process group from torchrun's environment; return True if one is running.

    ``device``: the run's device (``"cuda"`` picks NCCL and ``cuda:LOCAL_RANK``; anything
    else gloo). A group that already exists (created by your script) is used as it is.
    """
    if enabled():
        return True
    if not launched():
        return False
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} "
                        "is not set; start several processes with torchrun")
    use_cuda = str(device or "").startswith("cuda") or (
        device in (None, "auto") and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if use_cuda else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))
    return True


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if enabled():
        dist.barrier()


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over all processes, in place (on its own device)."""
    if enabled():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast_tensors(*tensors: torch.Tensor) -> None:
    """Overwrite each tensor with rank 0's values, in place, on every process."""
    if enabled():
        for t in tensors:
            dist.broadcast(t, src=0)


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every process (any picklable object: between our own processes)."""
    if not enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_decides(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only, its result (or its :class:`UserError`) on every rank.

    For what must be measured or chosen once: a latency table timed on every rank at the same
    time would time the others too, and could differ.
    """
    if not enabled():
        return fn()
    result: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            result = ("ok", fn())
        except UserError as e:
            result = ("error", str(e))
    status, value = broadcast_object(result)
    if status == "error":
        raise UserError(value)
    return value


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills a cache), then the others run it."""
    if not enabled():
        yield
        return
    if not is_main():
        dist.barrier()
    try:
        yield
    finally:
        if is_main():
            dist.barrier()


def shard_bounds(n: int, index: int | None = None, count: int | None = None) -> tuple[int, int]:
    """``[start, stop)`` of process ``index``'s contiguous share of ``n`` items (sizes differ
    by at most one; earlier ranks get the extra ones)."""
    index = rank() if index is None else index
    count = world_size() if count is None else count
    base, extra = divmod(n, count)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)
