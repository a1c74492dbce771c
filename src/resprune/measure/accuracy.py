"""Top-1 / top-5 accuracy and mean cross-entropy of a model over a loader."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..errors import UserError
from ._device import autocast, model_device
from .counts import _EvalMode


def evaluate(model: nn.Module, loader: Iterable[Any], precision: str = "fp32") -> dict[str, Any]:
    """Accuracy of ``model`` on every batch of ``loader``, in eval mode, without gradients.

    Returns ``{"top1", "top5", "loss", "n"}``: accuracies as fractions in [0, 1], ``loss`` the
    mean (unsmoothed) cross-entropy per sample, ``n`` the number of samples. With fewer than 5
    classes ``top5`` is top-``k`` over all ``k`` classes (so 1.0). Batches are moved to the
    model's device; the model's train/eval mode is restored afterwards.

    Under torchrun the sums are all-reduced: each process may read its own share of the split
    (resprune's loaders do) and every process returns the same numbers for the whole split.
    """
    device = model_device(model)
    n = torch.zeros((), dtype=torch.int64, device=device)
    correct1 = torch.zeros((), dtype=torch.int64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    with _EvalMode(model), torch.inference_mode():
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            hit = topk == y[:, None]
            correct1 += hit[:, 0].sum()
            correct5 += hit.any(dim=1).sum()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            n += y.shape[0]
    distributed.all_reduce_sum(n, correct1, correct5, loss_sum)
    n = int(n.item())
    if n == 0:
        raise UserError("cannot evaluate on an empty data set; check the data split sizes")
    return {"top1": correct1.item() / n, "top5": correct5.item() / n,
            "loss": loss_sum.item() / n, "n": n}
