"""CIFAR-10 / CIFAR-100 in the official "python version" layout, read without trusting pickle.

The official batch files are pickles of dicts holding numpy arrays. A pickle can run arbitrary
code when loaded, so they are read only through :class:`BatchUnpickler`, whose ``find_class``
hands out exactly the numpy callables needed to rebuild an array and refuses every other
global. A file that names anything else is not a CIFAR batch and is rejected before any of its
code can run.

Layouts (``root`` may be the parent directory or the batches directory itself)::

    root/cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch, batches.meta
    root/cifar-100-python/      train, test, meta              (labels under b'fine_labels')

The image count is taken from each file and whichever ``data_batch_*`` files exist are read,
so reduced copies (fewer or smaller batches) load unchanged.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives and how its files are named."""

    name: str
    dirname: str
    num_classes: int
    label_key: bytes
    names_key: bytes
    meta_file: str
    url: str
    md5: str


SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec("cifar10", "cifar-10-batches-py", 10, b"labels", b"label_names",
                         "batches.meta",
                         "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                         "c58f30108f718f92721af3b95e74349a"),
    "cifar100": CifarSpec("cifar100", "cifar-100-python", 100, b"fine_labels",
                          b"fine_label_names", "meta",
                          "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                          "eb9058c3a382ffc7106e4002c42a8d85"),
}

DOWNLOAD_TIMEOUT_S = 20.0
IMAGE_SHAPE = (3, 32, 32)
_PIXELS = 3 * 32 * 32


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR batch may name: what numpy needs to rebuild an ndarray.

    ``_reconstruct`` + ``ndarray`` + ``dtype`` cover pickle protocols 0-4 (and the Python-2
    files of the official archives, which say ``numpy.core``); ``_frombuffer`` covers
    protocol 5. The objects are resolved here, never by importing a name from the file.
    """
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class BatchUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that can rebuild numpy arrays and plain containers, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UserError(f"{getattr(self, 'source', 'batch file')}: refusing to unpickle "
                            f"{module}.{name}: the file is not a CIFAR batch") from None


def read_pickle(path: str | os.PathLike) -> Any:
    """Load one CIFAR pickle through :class:`BatchUnpickler` (``encoding="bytes"``)."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read CIFAR file {path}: {e.strerror}") from None
    with f:
        unpickler = BatchUnpickler(f, encoding="bytes")
        unpickler.source = str(path)  # type: ignore[attr-defined]
        try:
            return unpickler.load()
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated/garbled pickles raise many types
            raise UserError(f"CIFAR file {path} is corrupt ({type(e).__name__}: "
                            f"{str(e)[:120]}); delete it and download the dataset again") from None


def _batch_arrays(obj: Any, path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Check one unpickled batch and return (uint8 [N,3,32,32], int64 [N])."""

    def bad(why: str) -> UserError:
        return UserError(f"CIFAR batch {path} is corrupt: {why}; delete it and download the "
                         "dataset again")

    if not isinstance(obj, dict):
        raise bad(f"expected a dict, found {type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(spec.label_key, obj.get(spec.label_key.decode()))
    if data is None or labels is None:
        raise bad(f"missing b'data' or {spec.label_key!r}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", None)
        raise bad(f"b'data' must be a uint8 array of shape (N, {_PIXELS}), found "
                  f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    try:
        lab = np.asarray(labels)
    except Exception:  # noqa: BLE001
        raise bad("labels are not a list of integers") from None
    if lab.ndim != 1 or lab.dtype.kind not in "iu" or len(lab) != data.shape[0]:
        raise bad(f"expected {data.shape[0]} integer labels, found {lab.dtype} {lab.shape}")
    if len(lab) and (lab.min() < 0 or lab.max() >= spec.num_classes):
        raise bad(f"labels outside 0..{spec.num_classes - 1}")
    return data.reshape(-1, *IMAGE_SHAPE), lab.astype(np.int64)


def _read_batches(files: list[Path], spec: CifarSpec) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for f in files:
        x, y = _batch_arrays(read_pickle(f), f, spec)
        images.append(x)
        labels.append(y)
    return (torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
            torch.from_numpy(np.concatenate(labels)))


def _layout_error(root: Path, spec: CifarSpec, why: str) -> UserError:
    files = ("data_batch_1..5, test_batch, batches.meta" if spec.name == "cifar10"
             else "train, test, meta")
    return UserError(f"{root} {why}: expected the official CIFAR python layout "
                     f"{root}/{spec.dirname}/ ({files}); pass --download to fetch it")


def _train_files(d: Path, spec: CifarSpec) -> list[Path]:
    if spec.name == "cifar100":
        return [d / "train"] if (d / "train").is_file() else []
    found = [p for p in d.glob("data_batch_*") if re.fullmatch(r"data_batch_\d+", p.name)]
    return sorted((p for p in found if p.is_file()), key=lambda p: int(p.name.split("_")[-1]))


def _test_file(spec: CifarSpec) -> str:
    return "test_batch" if spec.name == "cifar10" else "test"


def find_dir(root: str | os.PathLike, name: str) -> Path:
    """The batches directory: ``root/<dirname>`` if present, else ``root`` itself."""
    spec = _spec(name)
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist; create it and pass --download "
                        f"to fetch {spec.name}, or point --data-dir at the extracted dataset")
    for d in (root / spec.dirname, root):
        if d.is_dir() and (_train_files(d, spec) or (d / _test_file(spec)).is_file()):
            if not _train_files(d, spec):
                raise _layout_error(d, spec, "has no training batches")
            if not (d / _test_file(spec)).is_file():
                raise _layout_error(d, spec, f"has no {_test_file(spec)}")
            return d
    raise _layout_error(root, spec, f"does not hold {spec.name}")


def class_names(d: Path, spec: CifarSpec) -> list[str]:
    """Label names from the meta file; ``"0".."N-1"`` when it is absent."""
    meta = d / spec.meta_file
    if meta.is_file():
        obj = read_pickle(meta)
        names = obj.get(spec.names_key) if isinstance(obj, dict) else None
        if isinstance(names, list) and len(names) == spec.num_classes:
            return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
                    for n in names]
    return [str(i) for i in range(spec.num_classes)]


@dataclass
class CifarData:
    """A CIFAR dataset in memory: uint8 images [N,3,32,32] and int64 labels [N]."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    directory: Path


def load_cifar(root: str | os.PathLike, name: str = "cifar10") -> CifarData:
    """Read CIFAR-10 or CIFAR-100 (``name``) from ``root``; see the module docstring."""
    spec = _spec(name)
    d = find_dir(root, name)
    train_x, train_y = _read_batches(_train_files(d, spec), spec)
    test_x, test_y = _read_batches([d / _test_file(spec)], spec)
    return CifarData(train_x, train_y, test_x, test_y, class_names(d, spec), d)


def _spec(name: str) -> CifarSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise UserError(f"unknown CIFAR variant {name!r}; choose cifar10 or cifar100") from None


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract(archive: Path, dest: Path) -> None:
    """Extract with tarfile's ``data`` filter: no absolute paths, no escapes, no devices."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # pragma: no cover - Python without PEP 706 backports
                for m in tar.getmembers():
                    target = (dest / m.name).resolve()
                    if not (m.isfile() or m.isdir()) or dest.resolve() not in target.parents:
                        raise UserError(f"archive {archive} holds an unsafe member {m.name!r}")
                tar.extractall(dest)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"cannot extract {archive}: {e}; delete it and download again") from None


def download(root: str | os.PathLike, name: str, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch and extract the official archive of ``name`` into ``root``; return the batches dir.

    Does nothing when the dataset is already there. The archive's MD5 is checked before it is
    extracted; a failed or partial download leaves no archive behind.
    """
    spec = _spec(name)
    root = Path(root)
    try:
        return find_dir(root, name)
    except UserError:
        pass
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create data directory {root}: {e.strerror}") from None
    archive = root / spec.url.rsplit("/", 1)[-1]
    if not (archive.is_file() and _md5(archive) == spec.md5):
        part = archive.with_name(archive.name + ".part")
        try:
            with urllib.request.urlopen(spec.url, timeout=timeout) as resp, \
                    open(part, "wb") as out:
                shutil.copyfileobj(resp, out, 1 << 20)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            part.unlink(missing_ok=True)
            reason = getattr(e, "reason", None) or e
            raise UserError(f"cannot download {spec.name} from {spec.url} ({reason}); check the "
                            f"network connection, or fetch the archive by hand and extract it "
                            f"into {root}") from None
        got = _md5(part)
        if got != spec.md5:
            part.unlink(missing_ok=True)
            raise UserError(f"downloaded {spec.url} has MD5 {got}, expected {spec.md5}; the "
                            "download is corrupt, try again")
        os.replace(part, archive)
    _extract(archive, root)
    return find_dir(root, name)
