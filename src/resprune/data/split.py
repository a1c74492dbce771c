"""Deterministic, stratified validation split carved from a training set.

Every decision resprune makes (erasure acceptance, pruning thresholds, model selection) is taken
on this split; the test set is only reported. The split depends only on the labels, the
fraction and the seed, so a resumed or repeated run sees exactly the same validation images.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError


def check_fraction(val_fraction: float, what: str = "val_fraction") -> float:
    """Return ``val_fraction`` as a float in [0, 1) or raise :class:`UserError`."""
    try:
        f = float(val_fraction)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number in [0, 1), got {val_fraction!r}") from None
    if not (0.0 <= f < 1.0) or math.isnan(f):
        raise UserError(f"{what} must be in [0, 1) (e.g. 0.1 for 10 %), got {val_fraction!r}")
    return f


def val_size(n: int, val_fraction: float) -> int:
    """Number of validation samples: ``n * val_fraction`` rounded half up."""
    return math.floor(n * check_fraction(val_fraction) + 0.5)


def stratified_split(labels: torch.Tensor, val_fraction: float = 0.1,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into (train, val), each an ascending int64 tensor.

    The validation set has exactly :func:`val_size` samples. Each class contributes
    ``floor(n_c * f)`` or ``ceil(n_c * f)`` of them: the floors first, then one more to the
    classes with the largest remainders (ties to the lower class id) until the total is
    reached. Which samples of a class go to validation is a seeded permutation. Sorting the
    result keeps the original order inside each part.
    """
    f = check_fraction(val_fraction)
    labels = torch.as_tensor(labels).reshape(-1).to("cpu", torch.int64)
    n = labels.numel()
    total = val_size(n, f)
    if total == 0:
        return torch.arange(n, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    if total >= n:
        raise UserError(f"val_fraction {f} leaves no training samples out of {n}; "
                        "use a smaller fraction")
    classes, counts = torch.unique(labels, sorted=True, return_counts=True)
    quota = [c * f for c in counts.tolist()]
    take = [math.floor(q) for q in quota]
    by_remainder = sorted(range(len(quota)), key=lambda i: (-(quota[i] - take[i]), i))
    for i in by_remainder[: total - sum(take)]:
        take[i] += 1
    g = torch.Generator().manual_seed(int(seed))
    val_parts = []
    for cls, k in zip(classes.tolist(), take):
        members = torch.nonzero(labels == cls).reshape(-1)
        perm = torch.randperm(members.numel(), generator=g)
        val_parts.append(members[perm[:k]])
    val = torch.sort(torch.cat(val_parts)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).reshape(-1), val
