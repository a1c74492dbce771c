"""Mixup of training batches (Zhang et al., ICLR 2018), seeded per step.

Each step's batch ``x`` is replaced by ``lam * x + (1 - lam) * x[perm]`` with ``lam`` drawn
from ``Beta(alpha, alpha)`` and ``perm`` a permutation of the batch, and the data loss is the
same mixture of the two labels' cross-entropies. Under distillation the teacher scores the
very mixed batch the student sees, so its soft targets stay a consistent target ("function
matching", Beyer et al., CVPR 2022) on images the teacher has never seen.

``lam`` and ``perm`` come from a generator seeded with ``(seed, epoch, step, rank)``, never
from the global RNG: a resumed run mixes exactly as an uninterrupted one, and runs without
mixup draw nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..data.loader import epoch_seed


class Mixed(NamedTuple):
    """One mixed batch: images, both label sets and the weight of the first."""

    x: torch.Tensor
    y: torch.Tensor
    y_other: torch.Tensor
    lam: float

    def cross_entropy(self, logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """``lam * CE(logits, y) + (1 - lam) * CE(logits, y_other)``."""
        return (self.lam * F.cross_entropy(logits, self.y, label_smoothing=label_smoothing)
                + (1 - self.lam) * F.cross_entropy(logits, self.y_other,
                                                   label_smoothing=label_smoothing))

    def dominant(self) -> torch.Tensor:
        """The label with the larger weight per image (``y`` when ``lam >= 0.5``): what
        ``train_acc`` counts a prediction against."""
        return self.y if self.lam >= 0.5 else self.y_other


def mix(x: torch.Tensor, y: torch.Tensor, alpha: float, seed: int, epoch: int, step: int,
        rank: int = 0) -> Mixed:
    """Mix the batch ``(x, y)`` with ``lam ~ Beta(alpha, alpha)`` (``alpha > 0``) drawn from
    the generator of ``(seed, epoch, step, rank)``."""
    rng = np.random.default_rng(epoch_seed(seed, epoch, step, rank))
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(int(x.shape[0]))).to(x.device)
    return Mixed(lam * x + (1 - lam) * x[perm], y, y[perm], lam)
