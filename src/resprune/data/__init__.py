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
from typing import Any, NamedTuple

import torch

from .. import distributed
from ..errors import UserError
from ..models.preprocess import IMAGENET_MEAN, IMAGENET_STD, make_preprocess
from . import cifar, digits, imagefolder, synthetic
from .imagefolder import ImageFolderLoader, Sample
from .loader import InMemoryLoader, check_batch_size
from .smallimages import SMALL_MAX, DecodedFolder, PendingImages, probe_size
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
IMAGEFOLDER_DEFAULTS: dict[str, Any] = {
    "image_size": None, "resize_size": None, "in_memory": None, "cache_dir": None,
    "workers": 0, "progress": True,
}
TEST_FOLDERS = ("test", "val")  # the first that exists is the test split
# ... and with both, val/ is the validation split (images the input model never saw)


@dataclass
class Split:
    """One part of a dataset: labels plus in-memory images, image files, or pending images.

    ``images`` is uint8 ``[N, C, H, W]`` (in-memory datasets) or ``None``; ``samples`` lists
    ``(path, label)`` for image-folder datasets read through a DataLoader; ``pending`` holds the
    images of a small-image folder that are decoded into memory when a loader first needs them
    (:meth:`materialize`). ``labels`` is int64 ``[N]`` in every case.
    """

    labels: torch.Tensor
    images: torch.Tensor | None = None
    samples: list[tuple[str, int]] | None = None
    pending: PendingImages | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.images, self.samples, self.pending)) != 1:
            raise ValueError("a Split holds exactly one of images, samples or pending images")

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def in_memory(self) -> bool:
        return self.images is not None or self.pending is not None

    def materialize(self) -> Split:
        """Decode pending images now (a no-op for other splits); return ``self``."""
        if self.pending is not None:
            self.images, self.pending = self.pending.get(), None
        return self

    def subset(self, indices: torch.Tensor) -> Split:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if self.images is not None:
            return Split(self.labels[idx], images=self.images[idx])
        if self.pending is not None:
            return Split(self.labels[idx], pending=self.pending.subset(idx))
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
    val_folder: str | None = None   # image folders: a val/ folder used as the validation split

    @property
    def in_memory(self) -> bool:
        return self.train.in_memory

    def preprocess(self) -> dict[str, Any]:
        """The ``preprocess`` entry a model trained on this data records (see
        :mod:`resprune.models.preprocess`)."""
        return make_preprocess(self.image_size, self.mean, self.std,
                               None if self.in_memory else self.resize_size)

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise UserError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (for ``summary.json``'s ``data`` entry)."""
        return {"name": self.name, "num_classes": self.num_classes,
                "input_shape": list(input_shape(self)), "train": len(self.train),
                "val": len(self.val), "test": len(self.test), "val_fraction": self.val_fraction,
                "seed": self.seed, "augment": self.augment, "source": self.source,
                "val_folder": self.val_folder, "in_memory": self.in_memory}


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
                 preprocess: dict[str, Any] | None = None, **options: Any) -> DataBundle:
    """Load dataset ``name`` (one of :data:`DATASETS`) and carve the validation split.

    * ``cifar10`` / ``cifar100``: the official python layout under ``data_dir`` (the parent
      or the batches directory); ``download=True`` fetches it first if absent.
    * ``imagefolder``: ``data_dir/train`` plus ``data_dir/test`` or ``data_dir/val`` (the test
      split). With both, ``test/`` is the test split and ``val/`` the validation split
      (``val_fraction`` and ``seed`` are then unused; all of ``train/`` trains). Small images
      (at most 64 px, or ``in_memory=True``) are decoded once into memory and cached (options
      ``in_memory``, ``cache_dir``, ``workers``, ``progress``; see
      :mod:`resprune.data.smallimages`); large ones are read by a DataLoader with the ImageNet
      transforms, options ``image_size`` (224) and ``resize_size`` (256).
    * ``digits``: scikit-learn's handwritten digits, offline; ``data_dir`` is ignored.
    * ``synthetic``: options ``num_classes``, ``channels``, ``image_size``, ``train_size``,
      ``test_size``, ``noise``, ``data_seed``, ``augment`` (see :data:`SYNTHETIC_DEFAULTS`).

    ``seed`` chooses the validation split only; the data itself never depends on it.
    ``preprocess`` (a model's ``preprocess`` entry) replaces the dataset's mean/std and, for
    large images, the crop and resize sizes; a model whose channels or input size cannot fit
    the data is a :class:`UserError`.
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
        return with_preprocess(_in_memory(
            key, d.train_images, d.train_labels, d.test_images, d.test_labels, f, seed,
            num_classes=cifar.SPECS[key].num_classes, mean=mean, std=std, augment=True,
            classes=d.classes, source=str(d.directory)), preprocess)
    if key == "digits":
        _options(key, options, {})
        tx, ty, ex, ey = digits.load_digits_data()
        mean = (round(float(tx.float().mean() / 255), 4),)
        std = (round(float(tx.float().std() / 255), 4),)
        return with_preprocess(_in_memory(
            key, tx, ty, ex, ey, f, seed, num_classes=digits.NUM_CLASSES, mean=mean, std=std,
            augment=False, classes=[str(i) for i in range(10)]), preprocess)
    if key == "synthetic":
        o = _options(key, options, SYNTHETIC_DEFAULTS)
        common = dict(num_classes=o["num_classes"], channels=o["channels"],
                      size=o["image_size"], noise=o["noise"], pattern_seed=o["data_seed"])
        tx, ty = synthetic.make_synthetic(o["train_size"], seed=o["data_seed"], **common)
        ex, ey = synthetic.make_synthetic(o["test_size"], seed=o["data_seed"] + 1, **common)
        c = int(o["channels"])
        return with_preprocess(_in_memory(
            key, tx, ty, ex, ey, f, seed, num_classes=int(o["num_classes"]), mean=(0.5,) * c,
            std=(0.25,) * c, augment=bool(o["augment"]),
            classes=[str(i) for i in range(int(o["num_classes"]))]), preprocess)
    # imagefolder
    return with_preprocess(_imagefolder(data_dir, f, seed, _options(key, options,
                                                                     IMAGEFOLDER_DEFAULTS)),
                           preprocess)


def _imagefolder(data_dir: str | os.PathLike | None, f: float, seed: int,
                 o: dict[str, Any]) -> DataBundle:
    root = _need_dir("imagefolder", data_dir)
    layout = (f"{root}/train/<class>/<image> and {root}/test/ (or val/)/<class>/<image> "
              f"(with both, val/ is the validation split)")
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist; an image folder needs {layout}")
    if not (root / "train").is_dir():
        raise UserError(f"{root} has no train/ folder; an image folder dataset needs {layout}")
    found = [root / t for t in TEST_FOLDERS if (root / t).is_dir()]
    if not found:
        raise UserError(f"{root} has no test/ or val/ folder; an image folder dataset needs "
                        f"{layout}")
    test_dir, val_dir = found[0], (found[1] if len(found) > 1 else None)
    classes = imagefolder.find_classes(root / "train")
    for d in found:
        extra = sorted(set(imagefolder.find_classes(d)) - set(classes))
        if extra:
            raise UserError(f"{d} has class folders missing from train: "
                            f"{', '.join(extra[:5])}; both need the same class names")
    train_s = imagefolder.scan(root / "train", classes)
    in_memory = o["in_memory"]
    native = max(probe_size(train_s[0][0]))
    if in_memory is None:
        in_memory = native <= SMALL_MAX
    size = int(o["image_size"] or (native if in_memory else 224))
    dec = dict(cache_dir=o["cache_dir"], workers=int(o["workers"]), progress=bool(o["progress"]))

    def folder(samples: list[Sample], d: Path) -> Split:
        labels = torch.tensor([y for _, y in samples], dtype=torch.int64)
        if not in_memory:
            return Split(labels, samples=samples)
        return Split(labels, pending=PendingImages(
            DecodedFolder(samples, size, name=f"{root.name}/{d.name}", **dec)))

    train = folder(train_s, root / "train")
    if val_dir is None:
        tr, va = stratified_split(train.labels, f, seed)
        train, val = train.subset(tr), train.subset(va)
    else:  # a held-out folder: nothing is carved from train/
        val = folder(imagefolder.scan(val_dir, classes), val_dir)
    resize = {} if in_memory else {"resize_size": int(o["resize_size"]
                                                       or round(size * 256 / 224))}
    return DataBundle(name="imagefolder", num_classes=len(classes), in_channels=3,
                      image_size=size, train=train, val=val,
                      test=folder(imagefolder.scan(test_dir, classes), test_dir),
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=True, classes=classes,
                      val_fraction=f, seed=seed, source=str(root),
                      val_folder=None if val_dir is None else str(val_dir), **resize)


def with_preprocess(bundle: DataBundle, pre: dict[str, Any] | None) -> DataBundle:
    """``bundle`` prepared the way a model expects (its ``preprocess`` entry), checked.

    In-memory data keeps its image size, so the model's ``input_size`` must equal it; image
    folders read from files take the model's crop and resize sizes. ``None``: unchanged.
    """
    if not pre:
        return bundle
    if len(pre["mean"]) != bundle.in_channels:
        raise UserError(f"the model expects {len(pre['mean'])}-channel images but --data "
                        f"{bundle.name} has {bundle.in_channels}-channel images")
    if bundle.in_memory and pre["input_size"] != bundle.image_size:
        raise UserError(f"the model expects {pre['input_size']}x{pre['input_size']} images but "
                        f"--data {bundle.name} has {bundle.image_size}x{bundle.image_size}; "
                        "use the data set the model was trained on")
    bundle.mean, bundle.std = tuple(pre["mean"]), tuple(pre["std"])
    if not bundle.in_memory:
        bundle.image_size = int(pre["input_size"])
        bundle.resize_size = int(pre.get("resize") or round(bundle.image_size * 256 / 224))
    return bundle


def make_loader(bundle: DataBundle, split: str, batch_size: int, *, train: bool,
                device: str | torch.device = "cpu", seed: int = 0, channels_last: bool = False,
                drop_last: bool | None = None, num_workers: int = 0,
                epoch_size: int | None = None) -> InMemoryLoader | ImageFolderLoader:
    """A loader over ``bundle.<split>``: shuffled and augmented when ``train``, else in order.

    In-memory splits use :class:`InMemoryLoader` (``num_workers`` is ignored; pending images
    of a small-image folder are decoded now); image folders read from files use
    :class:`ImageFolderLoader` (a ``DataLoader`` with ``num_workers`` processes).
    ``epoch_size`` (training only): each epoch takes the first ``epoch_size`` samples of that
    epoch's seeded permutation, a fresh random subset per epoch (budgets below one epoch).
    """
    part = bundle.split(split)
    check_batch_size(batch_size)
    augment = bundle.augment
    if epoch_size is not None and not train:
        raise ValueError("epoch_size applies to training loaders only")
    part.materialize()
    if part.images is not None:
        return InMemoryLoader(part.images, part.labels, batch_size, train=train,
                              mean=bundle.mean, std=bundle.std, device=device, seed=seed,
                              augment=augment, channels_last=channels_last, drop_last=drop_last,
                              epoch_size=epoch_size)
    assert part.samples is not None
    return ImageFolderLoader(part.samples, batch_size, train=train, mean=bundle.mean,
                             std=bundle.std, size=bundle.image_size,
                             resize=bundle.resize_size or round(bundle.image_size * 256 / 224),
                             device=device, seed=seed, augment=augment,
                             channels_last=channels_last, drop_last=drop_last,
                             num_workers=num_workers, epoch_size=epoch_size)


class Loaders(NamedTuple):
    """The three loaders a pipeline reads: ``train`` (trains), ``val`` (every decision) and
    ``test`` (only reported; may be ``None``). Any iterables of ``(images, labels)`` batches
    work; resprune's own loaders also have ``num_samples`` and ``set_epoch``."""

    train: Any
    val: Any
    test: Any = None


def make_loaders(bundle: DataBundle, batch_size: int, *, device: str | torch.device = "cpu",
                 seed: int = 0, num_workers: int = 0, channels_last: bool = False,
                 epoch_size: int | None = None) -> Loaders:
    """Training (shuffled, augmented, ``epoch_size`` images per epoch), validation and test
    loaders of ``bundle``; evaluation batches hold at least 256 images."""
    common = dict(device=device, seed=seed, num_workers=num_workers,
                  channels_last=channels_last)
    eval_bs = max(batch_size, 256)
    with distributed.main_first():  # under torchrun rank 0 fills the decode cache first
        for part in (bundle.train, bundle.val, bundle.test):
            part.materialize()
    return Loaders(make_loader(bundle, "train", batch_size, train=True, epoch_size=epoch_size,
                               **common),
                   make_loader(bundle, "val", eval_bs, train=False, **common),
                   make_loader(bundle, "test", eval_bs, train=False, **common))


def data_info(bundle: DataBundle, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``data`` entry of ``summary.json``: what a later command needs to rebuild the same
    splits (``name``, ``data_dir``, ``val_fraction``, ``seed``) and their sizes."""
    return {"name": bundle.name,
            "data_dir": str(data_dir) if data_dir is not None else bundle.source,
            "val_fraction": bundle.val_fraction, "seed": bundle.seed,
            "val_folder": bundle.val_folder,
            "num_classes": bundle.num_classes, "train": len(bundle.train),
            "val": len(bundle.val), "test": len(bundle.test)}


def resolve_loaders(data: DataBundle | Loaders | tuple, *, batch_size: int,
                    device: str | torch.device = "cpu", seed: int = 0,
                    channels_last: bool = False, epoch_size: int | None = None,
                    input_shape: tuple[int, ...] | None = None
                    ) -> tuple[Loaders, tuple[int, ...], dict[str, Any] | None]:
    """What the library pipelines accept as ``data``, made uniform.

    A :class:`DataBundle` gets resprune's loaders (:func:`make_loaders`); a
    :class:`Loaders` (or a ``(train, val, test)`` tuple) of your own is used as it is, its
    input shape read from the first validation batch unless ``input_shape`` is given. Returns
    ``(loaders, input_shape, data info for summary.json or None)``.
    """
    if isinstance(data, DataBundle):
        loaders = make_loaders(data, batch_size, device=device, seed=seed,
                               channels_last=channels_last, epoch_size=epoch_size)
        shape = input_shape or (data.in_channels, data.image_size, data.image_size)
        return loaders, tuple(shape), data_info(data)
    try:
        loaders = Loaders(*data)
    except TypeError:
        raise UserError("data must be a resprune.data.DataBundle or (train, val, test) "
                        f"loaders, got {type(data).__name__}") from None
    if loaders.val is None:
        raise UserError("the pipeline needs a validation loader (a split carved from the "
                        "training data): its decisions use it")
    if input_shape is None:
        first = next(iter(loaders.val), None)
        if first is None:
            raise UserError("the validation loader yields no batches; check the data split")
        input_shape = tuple(first[0].shape[1:])
    return loaders, tuple(input_shape), None


__all__ = [
    "CIFAR_STATS", "DATASETS", "DataBundle", "ImageFolderLoader", "InMemoryLoader", "Loaders",
    "Split", "data_info", "input_shape", "load_dataset", "make_loader", "make_loaders",
    "resolve_loaders", "stratified_split", "with_preprocess",
]
