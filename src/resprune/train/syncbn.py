"""``--sync-bn``: BatchNorm statistics over the global batch when several processes train.

Without it each process normalises with the statistics of its own slice of the batch (what
DistributedDataParallel does by default), so N processes train a slightly different net than
one process with the same global batch. With it, every BatchNorm layer's batch mean and
variance are those of the whole global batch, so N processes compute what one would (up to
float rounding).

``torch.nn.SyncBatchNorm`` refuses CPU tensors (gloo) and is not a ``BatchNorm2d``, which the
pruning code looks for; :class:`GlobalBatchNorm2d` is a ``BatchNorm2d`` that gathers each
process's (count, mean, variance) with one ``all_gather`` per layer (its gradient: one
``all_reduce``) and
combines them with the parallel-variance formula. :func:`global_batchnorm` swaps it in for the
duration of training, sharing the original layers' parameters and buffers (so optimizers,
callbacks and checkpoints see the same tensors and the same state-dict keys) and puts the
originals back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from .. import distributed


class _AllGather(torch.autograd.Function):
    """``[world, *shape]``: every process's tensor; the gradient of each process's own row
    is the sum of the gradients all processes send back to it."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rows = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, local.contiguous())
        return torch.stack(rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of all processes' batches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed.enabled()):
            return super().forward(x)
        dims = (0, 2, 3)
        count = x.new_full((1,), x.numel() / x.shape[1], dtype=torch.float32)
        xf = x.float()
        mean = xf.mean(dims)
        var = xf.var(dims, unbiased=False) if x.numel() > x.shape[1] else torch.zeros_like(mean)
        local = torch.cat([count, mean, var])
        stats = _AllGather.apply(local)  # [world, 1 + 2C]
        c = x.shape[1]
        counts, means, variances = stats[:, :1], stats[:, 1:1 + c], stats[:, 1 + c:]
        n = counts.sum()
        g_mean = (counts * means).sum(0) / n
        g_var = (counts * (variances + (means - g_mean) ** 2)).sum(0) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.0
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    m = 1.0 / float(self.num_batches_tracked)
                unbiased = g_var * (n / (n - 1)) if n > 1 else g_var
                for buf, value in ((self.running_mean, g_mean), (self.running_var, unbiased)):
                    buf.mul_(1 - m).add_(value.detach().to(buf), alpha=m)
        shape = (1, -1, 1, 1)
        y = (xf - g_mean.view(shape)) * torch.rsqrt(g_var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def _twin(bn: nn.BatchNorm2d) -> GlobalBatchNorm2d:
    """A GlobalBatchNorm2d sharing ``bn``'s parameters and buffers (the same tensors)."""
    new = GlobalBatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum,
                            affine=bn.affine, track_running_stats=bn.track_running_stats)
    for name, p in bn.named_parameters(recurse=False):
        setattr(new, name, p)
    for name, b in bn.named_buffers(recurse=False):
        setattr(new, name, b)
    new.train(bn.training)
    return new


@contextlib.contextmanager
def global_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every ``BatchNorm2d`` of ``model`` normalises over the global batch
    (see the module docstring); the original layers are back afterwards."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    if enabled:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.BatchNorm2d:
                    setattr(parent, name, _twin(child))
                    swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, original in swapped:
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)
