"""Datasets, the validation split and batch loaders.

>>> from resprune import data
>>> bundle = data.load_dataset("cifar10", "~/data", val_fraction=0.1, seed=0)
>>> train = data.make_loader(bundle, "train", 128, train=True, device="cuda")
>>> for epoch in range(epochs):
...     train.set_epoch(epoch)          # epoch e always gives the same batches
...     for x, y in train: ...

``load_dataset`` returns a :class:`DataBundle` with three :class:`Split` s: ``train`` (the
training set minus the validation split), ``val`` (a seeded, stratified ``val_fraction`` of the
training set, on which every decision is taken) and ``test`` (only reported).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from . import cifar, digits, imagefolder, synthetic
from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, ImageFolderLoader
from .loader import InMemoryLoader, check_batch_size
from .split import check_fraction, stratified_split

DATASETS = ["cifar10", "cifar100", "imagefolder", "digits", "synthetic"]

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "num_classes": 10, "channels": 3, "image_size": 32, "train_size": 512, "test_size": 256,
    "noise": 0.35, "data_seed": 0, "augment": False,
}
IMAGEFOLDER_DEFAULTS: dict[str, Any] = {"image_size": 224, "resize_size": 256}


@dataclass
class Split:
    """One part of a dataset: labels plus either in-memory images or image files.

    ``images`` is uint8 ``[N, C, H, W]`` (in-memory datasets) or ``None``; ``samples`` lists
    ``(path, label)`` for image-folder datasets. ``labels`` is int64 ``[N]`` in both cases.
    """

    labels: torch.Tensor
    images: torch.Tensor | None = None
    samples: list[tuple[str, int]] | None = None

    def __post_init__(self) -> None:
        if (self.images is None) == (self.samples is None):
            raise ValueError("a Split holds either images or samples")

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def subset(self, indices: torch.Tensor) -> Split:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if self.images is not None:
            return Split(self.labels[idx], images=self.images[idx])
        assert self.samples is not None
        return Split(self.labels[idx], samples=[self.samples[i] for i in idx.tolist()])


@dataclass
class DataBundle:
    """A dataset ready for training: three splits and what a model and loader need to know."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    val: Split
    test: Split
    augment: bool = True
    classes: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    seed: int = 0
    resize_size: int | None = None  # image folders: eval resize of the shorter side
    source: str | None = None       # the directory read, if any

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise UserError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (for ``summary.json``'s ``data`` entry)."""
        return {"name": self.name, "num_classes": self.num_classes,
                "input_shape": list(input_shape(self)), "train": len(self.train),
                "val": len(self.val), "test": len(self.test), "val_fraction": self.val_fraction,
                "seed": self.seed, "augment": self.augment, "source": self.source}


def input_shape(bundle: DataBundle) -> tuple[int, int, int]:
    """``(C, H, W)`` of one model input."""
    return (bundle.in_channels, bundle.image_size, bundle.image_size)


def _options(name: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise UserError(f"option(s) {', '.join(unknown)} not valid for dataset {name} "
                        f"(valid: {valid})")
    return {**defaults, **given}


def _need_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None or str(data_dir) == "":
        hint = " (add --download to fetch it)" if name.startswith("cifar") else ""
        raise UserError(f"dataset {name} needs a data directory: pass --data-dir DIR{hint}")
    return Path(data_dir).expanduser()


def _in_memory(name: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
               test_y: torch.Tensor, val_fraction: float, seed: int, **fields: Any) -> DataBundle:
    full = Split(train_y, images=train_x)
    tr, va = stratified_split(train_y, val_fraction, seed)
    return DataBundle(name=name, in_channels=int(train_x.shape[1]),
                      image_size=int(train_x.shape[-1]), train=full.subset(tr),
                      val=full.subset(va), test=Split(test_y, images=test_x),
                      val_fraction=val_fraction, seed=seed, **fields)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                 val_fraction: float = 0.1, seed: int = 0, download: bool = False,
                 **options: Any) -> DataBundle:
    """Load dataset ``name`` (one of :data:`DATASETS`) and carve the validation split.

    * ``cifar10`` / ``cifar100``: the official python layout under ``data_dir`` (the parent
      or the batches directory); ``download=True`` fetches it first if absent.
    * ``imagefolder``: ``data_dir/train`` and ``data_dir/val`` (the latter is reported as the
      test split); options ``image_size`` (224) and ``resize_size`` (256).
    * ``digits``: scikit-learn's handwritten digits, offline; ``data_dir`` is ignored.
    * ``synthetic``: options ``num_classes``, ``channels``, ``image_size``, ``train_size``,
      ``test_size``, ``noise``, ``data_seed``, ``augment`` (see :data:`SYNTHETIC_DEFAULTS`).

    ``seed`` chooses the validation split only; the data itself never depends on it.
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    f = check_fraction(val_fraction)
    seed = int(seed)
    if key in cifar.SPECS:
        _options(key, options, {})
        root = _need_dir(key, data_dir)
        if download:
            cifar.download(root, key)
        d = cifar.load_cifar(root, key)
        mean, std = CIFAR_STATS[key]
        return _in_memory(key, d.train_images, d.train_labels, d.test_images, d.test_labels,
                          f, seed, num_classes=cifar.SPECS[key].num_classes, mean=mean,
                          std=std, augment=True, classes=d.classes, source=str(d.directory))
    if key == "digits":
        _options(key, options, {})
        tx, ty, ex, ey = digits.load_digits_data()
        mean = (round(float(tx.float().mean() / 255), 4),)
        std = (round(float(tx.float().std() / 255), 4),)
        return _in_memory(key, tx, ty, ex, ey, f, seed, num_classes=digits.NUM_CLASSES,
                          mean=mean, std=std, augment=False,
                          classes=[str(i) for i in range(10)])
    if key == "synthetic":
        o = _options(key, options, SYNTHETIC_DEFAULTS)
        common = dict(num_classes=o["num_classes"], channels=o["channels"],
                      size=o["image_size"], noise=o["noise"], pattern_seed=o["data_seed"])
        tx, ty = synthetic.make_synthetic(o["train_size"], seed=o["data_seed"], **common)
        ex, ey = synthetic.make_synthetic(o["test_size"], seed=o["data_seed"] + 1, **common)
        c = int(o["channels"])
        return _in_memory(key, tx, ty, ex, ey, f, seed, num_classes=int(o["num_classes"]),
                          mean=(0.5,) * c, std=(0.25,) * c, augment=bool(o["augment"]),
                          classes=[str(i) for i in range(int(o["num_classes"]))])
    # imagefolder
    o = _options(key, options, IMAGEFOLDER_DEFAULTS)
    root = _need_dir(key, data_dir)
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist; an image folder needs "
                        f"{root}/train/<class>/<image> and {root}/val/<class>/<image>")
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise UserError(f"{root} has no {part}/ folder; an image folder dataset needs "
                            f"{root}/train/<class>/<image> and {root}/val/<class>/<image>")
    classes = imagefolder.find_classes(root / "train")
    extra = sorted(set(imagefolder.find_classes(root / "val")) - set(classes))
    if extra:
        raise UserError(f"{root}/val has class folders missing from train: "
                        f"{', '.join(extra[:5])}; both need the same class names")
    train_s = imagefolder.scan(root / "train", classes)
    test_s = imagefolder.scan(root / "val", classes)
    full = Split(torch.tensor([y for _, y in train_s], dtype=torch.int64), samples=train_s)
    tr, va = stratified_split(full.labels, f, seed)
    return DataBundle(name=key, num_classes=len(classes), in_channels=3,
                      image_size=int(o["image_size"]), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      train=full.subset(tr), val=full.subset(va),
                      test=Split(torch.tensor([y for _, y in test_s], dtype=torch.int64),
                                 samples=test_s),
                      augment=True, classes=classes, val_fraction=f, seed=seed,
                      resize_size=int(o["resize_size"]), source=str(root))


def make_loader(bundle: DataBundle, split: str, batch_size: int, *, train: bool,
                device: str | torch.device = "cpu", seed: int = 0, channels_last: bool = False,
                drop_last: bool | None = None,
                num_workers: int = 0) -> InMemoryLoader | ImageFolderLoader:
    """A loader over ``bundle.<split>``: shuffled and augmented when ``train``, else in order.

    In-memory splits use :class:`InMemoryLoader` (``num_workers`` is ignored); image folders
    use :class:`ImageFolderLoader` (a ``DataLoader`` with ``num_workers`` processes).
    """
    part = bundle.split(split)
    check_batch_size(batch_size)
    augment = bundle.augment
    if part.images is not None:
        return InMemoryLoader(part.images, part.labels, batch_size, train=train,
                              mean=bundle.mean, std=bundle.std, device=device, seed=seed,
                              augment=augment, channels_last=channels_last, drop_last=drop_last)
    assert part.samples is not None
    return ImageFolderLoader(part.samples, batch_size, train=train, mean=bundle.mean,
                             std=bundle.std, size=bundle.image_size,
                             resize=bundle.resize_size or round(bundle.image_size * 256 / 224),
                             device=device, seed=seed, augment=augment,
                             channels_last=channels_last, drop_last=drop_last,
                             num_workers=num_workers)


__all__ = [
    "CIFAR_STATS", "DATASETS", "DataBundle", "ImageFolderLoader", "InMemoryLoader", "Split",
    "input_shape", "load_dataset", "make_loader", "stratified_split",
]
