"""BatchNorm statistics re-estimated on training images: accuracy right after a cut that means
something.

A pruned or erased network is scored in eval mode with the running means and variances its
BatchNorm layers learnt before the cut; removing channels moves every layer's input, so those
statistics no longer fit. On the converged ResNet-56 of
``benchmarks/cifar10_jpeg_resnet56.py`` every Taylor-ranked pruning to 68-92 % fewer params
scored 10-11 % on the validation split right after the cut (chance), whatever was removed;
with the statistics re-estimated on 2,048 training images the same pruned models scored
13-39 %, and every ranking scored clearly lower also fine-tuned worse (its highest pick only
tied: ``docs/vacl.md``, "Comparing rankings before training"). Training in train mode normalises
with each batch's own statistics, so this changes evaluation only, never what a fine-tune
learns::

    from resprune.measure import evaluate, recalibrate_batchnorm

    recalibrate_batchnorm(pruned, train_loader, samples=2048)
    evaluate(pruned, val_loader)["top1"]
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .. import distributed
from ..data.loader import seeded_batches
from ..errors import UserError
from ._device import model_device


def recalibrate_batchnorm(model: nn.Module, loader: Iterable, samples: int,
                          seed: int = 0) -> int:
    """Replace the running statistics of every BatchNorm layer of ``model`` with those of the
    first ``samples`` images of ``loader`` (epoch 0 of a resprune loader, read under
    ``seed``: see :func:`resprune.data.loader.seeded_batches`).

    The layers see the images in train mode without gradients and average them equally
    (cumulative moving average), whatever their ``momentum``; momentum, the weights and the
    model's train/eval mode are left as they were. Returns the number of images read (fewer
    than ``samples`` when the loader holds fewer; whole batches are read, so possibly a few
    more). A model without BatchNorm layers is left unchanged and 0 is returned. Under
    torchrun each process reads its own share of a resprune loader and rank 0's statistics
    are then copied to every process, so all of them hold the same model.
    """
    if samples < 1:
        raise UserError(f"BatchNorm re-estimation needs at least 1 image, got {samples}")
    norms = [m for _, m in _tracked_norms(model)]
    if not norms:
        return 0
    device = model_device(model)
    momenta = [m.momentum for m in norms]
    was_training = model.training
    seen = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches read
        model.train()
        # every batch holds at least one image, so `samples` batches always suffice
        with torch.no_grad(), seeded_batches(loader, samples, seed) as first:
            for x, _ in first:
                model(x.to(device, non_blocking=True))
                seen += x.shape[0]
                if seen >= samples:
                    break
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise UserError("BatchNorm re-estimation read no images: the training loader is empty")
    distributed.broadcast_tensors(*(getattr(m, key) for m in norms for key in _STATISTICS))
    return seen


def batchnorm_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every BatchNorm layer's running statistics, by state-dict key: put them back
    with ``model.load_state_dict(saved, strict=False)`` (after a trial re-estimation)."""
    return {f"{name}.{key}" if name else key: getattr(m, key).detach().clone()
            for name, m in _tracked_norms(model) for key in _STATISTICS}


_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _tracked_norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BatchNorm layers of ``model`` that keep running statistics, by name."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
