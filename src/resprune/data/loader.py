"""Batch loaders with one interface for in-memory and image-folder data.

Every loader yields ``(x, y)``: ``x`` float32 ``[B, C, H, W]`` normalised per channel, ``y``
int64 ``[B]``, both on the loader's device. It has ``len()`` (batches per pass),
``num_samples``, ``batch_size`` and ``set_epoch(epoch)``.

Reproducibility: shuffling and augmentation of epoch ``e`` are drawn from a generator seeded
from ``(seed, e)`` alone, so ``set_epoch(e)`` replays epoch ``e`` exactly; a training run
resumed at epoch ``e`` sees the same batches as an uninterrupted one. Random numbers are drawn
on the CPU, so the order, crops and flips do not depend on the device either. ``__iter__``
uses the current epoch and then advances it by one, so a caller that never calls
``set_epoch`` still gets a fresh order every pass.

Several processes (torchrun, :mod:`resprune.distributed`): ``batch_size`` stays the global
batch. A training loader gives process ``r`` of ``N`` the ``r``-th of ``N`` equal slices of
every batch the one-process loader would give (its epoch drops up to ``N - 1`` samples so
that every batch divides evenly), so N processes together see exactly the batches of one. An
evaluation loader gives each process a contiguous ``1/N`` of the split; sums over it are
all-reduced by :func:`resprune.measure.evaluate`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from .. import distributed
from ..errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_seed(seed: int, epoch: int, *extra: int) -> int:
    """A 63-bit seed derived from ``(seed, epoch, *extra)``; distinct tuples do not collide."""
    ss = np.random.SeedSequence([int(seed) & (2**64 - 1), int(epoch), *map(int, extra)])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


@contextlib.contextmanager
def seeded_batches(loader: Iterable, n: int, seed: int) -> Iterator[Iterator]:
    """The first ``n`` batches of epoch 0 of ``loader``, read inside a forked global RNG seeded
    with ``seed``: a score computed on them depends on neither what the loader nor the RNG did
    before, and reading them changes neither for what comes after (a resprune loader is set
    to epoch 0; other iterables are read from their start)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)
        yield itertools.islice(loader, n)


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    return batch_size


def check_epoch_size(epoch_size: int | None, n: int, train: bool) -> int | None:
    """``epoch_size`` checked against the ``n`` samples of a split (``None``: all of them)."""
    if epoch_size is None:
        return None
    if not train:
        raise ValueError("epoch_size applies to training loaders only")
    if isinstance(epoch_size, bool) or not isinstance(epoch_size, int) or epoch_size < 1:
        raise UserError(f"epoch size must be a positive integer, got {epoch_size!r}")
    return min(epoch_size, n)


def num_batches(num_samples: int, batch_size: int, drop_last: bool) -> int:
    return num_samples // batch_size if drop_last else -(-num_samples // batch_size)


class Shard:
    """Which part of every pass a process reads: process ``rank`` of ``world``.

    ``None`` (the loaders' default) means this process's place under torchrun (``0`` of ``1``
    without it).
    """

    def __init__(self, shard: tuple[int, int] | None = None):
        rank, world = ((distributed.rank(), distributed.world_size()) if shard is None
                       else (int(shard[0]), int(shard[1])))
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
        self.rank, self.world = rank, world

    def local_batch(self, batch_size: int) -> int:
        if batch_size % self.world:
            raise UserError(f"batch size {batch_size} does not divide evenly over "
                            f"{self.world} processes; use a multiple of {self.world}")
        return batch_size // self.world

    def train_samples(self, n: int) -> int:
        """Samples per training epoch: ``n`` rounded down to a multiple of ``world``."""
        return n - n % self.world

    def of_batches(self, n: int, batch_size: int) -> torch.Tensor:
        """Positions ``0..n-1`` this process takes: its slice of every ``batch_size`` batch."""
        pos = torch.arange(n)
        if self.world == 1:
            return pos
        parts = []
        for k in range(0, n, batch_size):
            batch = pos[k:k + batch_size]
            m = batch.numel() // self.world
            parts.append(batch[self.rank * m:(self.rank + 1) * m])
        return torch.cat(parts)

    def block(self, n: int) -> tuple[int, int]:
        """``[start, stop)``: this process's contiguous share of ``n`` evaluation samples."""
        return distributed.shard_bounds(n, self.rank, self.world)


class Normalizer:
    """uint8 ``[B,C,H,W]`` -> float32 ``(x / 255 - mean) / std`` per channel, on one device.

    Computed as ``x * (1 / (255 std)) - mean / std`` in place on the converted batch (two
    passes instead of four temporaries: about 3.7x faster on the CPU; equal to the textbook
    formula within float32 rounding).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device,
                 channels_last: bool = False):
        if len(mean) != len(std):
            raise ValueError("mean and std need one value per channel")
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.mean = m.to(device)
        self.std = s.to(device)
        self.scale = (1.0 / (255.0 * s)).to(device)
        self.shift = (m / s).to(device)
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = x.to(torch.float32).mul_(self.scale).sub_(self.shift)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def pad_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
                  pad: int) -> torch.Tensor:
    """Zero-pad ``x`` [B,C,H,W] by ``pad``, crop each sample at its own offset, flip some.

    ``offsets`` is int64 [B, 2] (row, column) in ``0..2*pad``; ``flips`` is bool [B]. One
    gather does every sample at once (no Python loop over samples). Sample ``b`` of the result
    equals ``padded[b, :, r:r+H, c:c+W]``, mirrored left-right when ``flips[b]``.
    """
    b, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = offsets.to(dev)
    flips = flips.to(dev)
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = offsets[:, 0:1] + ar_h  # [B, H]
    cols = offsets[:, 1:2] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)  # [B, W]
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class InMemoryLoader:
    """Batches from a uint8 image tensor that lives on the target device.

    ``train=True``: a fresh permutation per epoch, and when ``augment`` a per-sample
    ``pad``-pixel zero pad + random crop + random horizontal flip; the last partial batch is
    dropped only when ``drop_last``. ``train=False``: the stored order, no augmentation, the
    last partial batch kept. Batches are assembled with tensor ops on the device.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 train: bool, mean: Sequence[float], std: Sequence[float],
                 device: str | torch.device = "cpu", seed: int = 0, augment: bool = True,
                 pad: int = 4, channels_last: bool = False, drop_last: bool | None = None,
                 epoch_size: int | None = None, shard: tuple[int, int] | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N,C,H,W], got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError("need one label per image")
        if len(mean) != images.shape[1]:
            raise ValueError(f"mean/std have {len(mean)} channels, images {images.shape[1]}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = check_batch_size(batch_size)
        self.train = train
        self.augment = augment and train
        self.pad = int(pad)
        self.seed = int(seed)
        self.drop_last = bool(drop_last) if train else False
        self.epoch_size = check_epoch_size(epoch_size, int(images.shape[0]), train)
        self.epoch = 0
        self.normalize = Normalizer(mean, std, self.device, channels_last)
        self.shard = Shard(shard)
        self.local_batch = self.shard.local_batch(self.batch_size) if train else self.batch_size

    @property
    def num_samples(self) -> int:
        """Samples per pass over all processes: ``epoch_size`` when set, else the whole split
        (training with N processes: rounded down to a multiple of N)."""
        n = self.epoch_size or int(self.images.shape[0])
        return self.shard.train_samples(n) if self.train else n

    def __len__(self) -> int:
        if not self.train:
            start, stop = self.shard.block(self.num_samples)
            return num_batches(stop - start, self.batch_size, False)
        return num_batches(self.num_samples, self.batch_size, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Order, crop offsets and flips for one epoch, drawn on the CPU from (seed, epoch)."""
        n = int(self.images.shape[0])
        if not self.train:
            return torch.arange(*self.shard.block(n)), None, None
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g)
        if not self.augment:
            return order[:self.num_samples], None, None
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        k = self.num_samples  # a subset per epoch: the first k of this epoch's permutation
        return order[:k], offsets[:k], flips[:k]

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        order, offsets, flips = self._plan(epoch)
        bs = self.batch_size
        if self.train:
            n = len(self) * bs if self.drop_last else order.numel()
            mine = self.shard.of_batches(min(n, order.numel()), bs)
            order = order[mine]
            if offsets is not None and flips is not None:
                offsets, flips = offsets[mine], flips[mine]
            bs = self.local_batch
        order = order.to(self.device)
        if offsets is not None and flips is not None:
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        for k in range(len(self)):
            sel = slice(k * bs, (k + 1) * bs)
            idx = order[sel]
            x = self.images[idx]
            if offsets is not None and flips is not None:
                x = pad_crop_flip(x, offsets[sel], flips[sel], self.pad)
            yield self.normalize(x), self.labels[idx]
