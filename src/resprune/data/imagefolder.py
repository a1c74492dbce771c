"""ImageFolder-style datasets (one sub-folder per class) with the standard ImageNet transforms.

Layout: ``root/<class name>/**/<image>``; classes are the sorted sub-folder names, images are
decoded with PIL and converted to RGB. The transforms are written here (no torchvision):

* train: random-resized crop (area scale (0.08, 1), aspect ratio (3/4, 4/3)) to ``size`` and a
  horizontal flip with probability 1/2;
* eval: resize the shorter side to ``resize`` (256) and center-crop ``size`` (224).

The dataset returns uint8 ``[size, size, 3]`` tensors (the decoder's own layout: one copy out
of PIL, no transpose in the workers); :class:`ImageFolderLoader` moves the batch to the device
as uint8 (a quarter of the float traffic), puts the channels first and normalises it there.
Worker processes start once per loader and serve every pass (``persistent_workers``); the
epoch travels with each index, so the augmentation of a pass does not depend on them. Random
crops and flips of sample ``i`` in epoch ``e`` are drawn from a generator seeded from
``(seed, e, i)``, so an epoch replays exactly whatever the number of worker processes (and
of torchrun processes: each reads its share, as :mod:`resprune.data.loader` describes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from ..models.preprocess import IMAGENET_MEAN, IMAGENET_STD
from .loader import (
    Batch,
    Normalizer,
    Shard,
    check_batch_size,
    check_epoch_size,
    epoch_generator,
    epoch_seed,
    num_batches,
)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

Sample = tuple[str, int]


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted names of the (non-hidden) sub-folders of ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist; expected {root}/<class>/<image> "
                        "with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"image folder {root} has no class sub-folders; expected "
                        f"{root}/<class>/<image> with one sub-folder per class")
    return classes


def scan(root: str | os.PathLike, classes: Sequence[str]) -> list[Sample]:
    """All images under ``root/<class>/`` as ``(path, class index)``, in sorted order.

    A class in ``classes`` without a folder under ``root`` simply has no samples (a validation
    folder may lack some classes); a class folder with no images is an error.
    """
    root = Path(root)
    samples: list[Sample] = []
    for idx, name in enumerate(classes):
        d = root / name
        if not d.is_dir():
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
            found += [os.path.join(dirpath, f) for f in sorted(filenames)
                      if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")]
        if not found:
            raise UserError(f"class folder {d} has no images (looked for "
                            f"{', '.join(IMG_EXTENSIONS)})")
        samples += [(p, idx) for p in found]
    return samples


def load_image(path: str) -> Image.Image:
    """Decode ``path`` as an RGB PIL image, or raise :class:`UserError` naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"cannot decode image {path} ({e}); remove or replace the file") from None


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)
                            ) -> tuple[int, int, int, int]:
    """A random ``(left, top, w, h)`` box covering a ``scale`` fraction of the area.

    The aspect ratio is log-uniform in ``ratio``. Up to ten draws are tried; if none fits
    inside the image, the largest central box with an aspect ratio clamped to ``ratio`` is used.
    """
    area = width * height
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(lo, hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, w, h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size``, keeping the aspect ratio (bilinear)."""
    w, h = img.size
    if w <= h:
        new = (size, max(1, int(size * h / w)))
    else:
        new = (max(1, int(size * w / h)), size)
    return img if new == (w, h) else img.resize(new, Image.Resampling.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` region (zero-padded if the image is smaller)."""
    w, h = img.size
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_hwc_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [H, W, 3], one copy."""
    return torch.from_numpy(np.array(img, dtype=np.uint8))


def train_transform(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    left, top, w, h = random_resized_crop_box(img.width, img.height, rng)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def eval_transform(img: Image.Image, size: int, resize: int) -> Image.Image:
    return center_crop(resize_shorter(img, resize), size)


class ImageFolderDataset(torch.utils.data.Dataset):
    """``(uint8 [size,size,3], label)`` for each sample, train or eval transform applied.

    Indexed by ``i`` (the current ``epoch``) or by ``(epoch, i)`` (what the loader's sampler
    gives, so persistent workers need no epoch of their own).
    """

    def __init__(self, samples: Sequence[Sample], *, train: bool, size: int = 224,
                 resize: int = 256, seed: int = 0):
        self.samples = list(samples)
        self.train = train
        self.size = size
        self.resize = resize
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        path, label = self.samples[index]
        img = load_image(path)
        if self.train:
            rng = np.random.default_rng(epoch_seed(self.seed, epoch, index))
            img = train_transform(img, self.size, rng)
        else:
            img = eval_transform(img, self.size, self.resize)
        return to_hwc_tensor(img), label


class _EpochSampler(torch.utils.data.Sampler[int]):
    """This process's indices of one pass.

    Training (``shuffle``): the first ``k`` of a permutation of ``0..n-1`` drawn from
    ``(seed, epoch)``, then this process's slice of every ``batch`` of them. Evaluation: this
    process's contiguous block of ``0..n-1``.
    """

    def __init__(self, n: int, shuffle: bool, seed: int, k: int, batch: int, shard: Shard):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0
        self.k, self.batch, self.shard = k, batch, shard
        self.mine = shard.of_batches(k, batch) if shuffle else torch.arange(*shard.block(n))

    def __len__(self) -> int:
        return int(self.mine.numel())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """``(epoch, index)`` pairs (see :class:`ImageFolderDataset`)."""
        if not self.shuffle:
            return ((self.epoch, i) for i in self.mine.tolist())
        order = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch))
        return ((self.epoch, i) for i in order[:self.k][self.mine].tolist())


class ImageFolderLoader:
    """A ``torch.utils.data.DataLoader`` over image files, with the in-memory loader's interface.

    ``train=True`` shuffles and applies the training transform (when ``augment``), otherwise
    the eval transform in stored order with the last partial batch kept.
    """

    def __init__(self, samples: Sequence[Sample], batch_size: int, *, train: bool,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 size: int = 224, resize: int = 256, device: str | torch.device = "cpu",
                 seed: int = 0, augment: bool = True, channels_last: bool = False,
                 drop_last: bool | None = None, num_workers: int = 0,
                 epoch_size: int | None = None, shard: tuple[int, int] | None = None):
        self.device = torch.device(device)
        self.batch_size = check_batch_size(batch_size)
        self.train = train
        self.augment = augment and train
        self.drop_last = bool(drop_last) if train else False
        self.num_workers = int(num_workers)
        if self.num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset = ImageFolderDataset(samples, train=train and augment, size=size,
                                          resize=resize, seed=seed)
        self.shard = Shard(shard)
        n = len(self.dataset)
        k = check_epoch_size(epoch_size, n, train) or n
        self.num_samples = self.shard.train_samples(k) if train else n
        """Samples per pass over all processes (training with N: a multiple of N)."""
        self.local_batch = self.shard.local_batch(self.batch_size) if train else self.batch_size
        steps = num_batches(self.num_samples, self.batch_size, self.drop_last)
        used = min(steps * self.batch_size, self.num_samples) if train else n
        self.sampler = _EpochSampler(n, shuffle=train, seed=seed, k=used,
                                     batch=self.batch_size, shard=self.shard)
        self.normalize = Normalizer(mean, std, self.device, channels_last)
        self.channels_last = channels_last
        self.epoch = 0
        self._loader: torch.utils.data.DataLoader | None = None

    def __len__(self) -> int:
        return num_batches(len(self.sampler), self.local_batch, False)

    def _data_loader(self) -> torch.utils.data.DataLoader:
        """One DataLoader for the loader's life: its workers serve every pass."""
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=self.local_batch, sampler=self.sampler,
                drop_last=False, num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                pin_memory=self.device.type == "cuda")
        return self._loader

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        self.dataset.epoch = epoch
        self.sampler.epoch = epoch
        if len(self.sampler) == 0:
            return
        it = iter(self._data_loader())
        while True:
            try:
                x, y = next(it)
            except StopIteration:
                return
            except UserError as e:  # from a worker: keep only the original one-line message
                raise UserError(_worker_message(str(e))) from None
            x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            if not self.channels_last:  # [B,H,W,C] storage is channels_last already
                x = x.contiguous()
            yield self.normalize(x), y.to(self.device, torch.int64, non_blocking=True)


def _worker_message(msg: str) -> str:
    """The original message of a UserError re-raised by a DataLoader worker."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return msg
    last = lines[-1]
    prefix = "UserError: "
    return last[last.index(prefix) + len(prefix):] if prefix in last else last
