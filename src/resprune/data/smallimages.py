"""Image folders of small images (CIFAR-size JPEG mirrors), decoded once and kept in memory.

Small images (by default when the first training image is at most :data:`SMALL_MAX` pixels on
its longer side) would spend most of a DataLoader's time in per-file overhead. Instead each
folder is decoded once, in parallel worker processes with a progress bar, into one uint8
``[N, 3, S, S]`` tensor that the in-memory loader feeds with CIFAR-style augmentation, exactly
like ``--data cifar10``. The tensor is cached on disk as safetensors (no pickle), keyed by the
file list with sizes and modification times, so the next run starts in seconds; the cache file
is written atomically. A folder is decoded only when a loader first needs it: ``resprune eval
--split test`` never decodes ``train/``.

Images whose size differs from ``S`` are resized (shorter side) and center-cropped to ``S``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from tqdm import tqdm

from .. import distributed
from ..errors import UserError
from ..io import atomic_write_bytes
from .imagefolder import Sample, center_crop, load_image, resize_shorter

SMALL_MAX = 64  # images up to this many pixels on their longer side are decoded into memory
CACHE_ENV = "RESPRUNE_CACHE_DIR"
CACHE_FORMAT = "resprune-images-1"

log = logging.getLogger("resprune.data")


def default_cache_dir() -> Path:
    """``$RESPRUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/resprune``, else ``~/.cache/resprune``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "resprune"


def probe_size(path: str) -> tuple[int, int]:
    """``(width, height)`` of one image, read from its header."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError) as e:
        raise UserError(f"cannot decode image {path} ({e}); remove or replace the file") from None


def _decode_chunk(args: tuple[list[str], int]) -> np.ndarray:
    paths, size = args
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for k, p in enumerate(paths):
        img = load_image(p)
        if img.size != (size, size):
            img = center_crop(resize_shorter(img, size), size)
        out[k] = np.asarray(img, dtype=np.uint8)
    return out


def decode_files(paths: list[str], size: int, *, workers: int = 0, progress: bool = True,
                 desc: str = "decoding images") -> torch.Tensor:
    """Decode ``paths`` into uint8 ``[N, 3, size, size]``, in ``workers`` processes (0: all
    cores)."""
    n = len(paths)
    workers = workers or os.cpu_count() or 1
    workers = max(1, min(workers, n // 256 + 1))
    chunk = max(64, min(2048, -(-n // (workers * 8)))) if n else 1
    jobs = [(paths[i:i + chunk], size) for i in range(0, n, chunk)]
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    bar = tqdm(total=n, desc=desc, unit="img", file=sys.stderr,
               disable=not progress or not distributed.is_main(), dynamic_ncols=True)
    try:
        if workers == 1:
            results = map(_decode_chunk, jobs)
            pos = 0
            for arr in results:
                out[pos:pos + len(arr)] = arr
                pos += len(arr)
                bar.update(len(arr))
        else:
            ctx = get_context("fork") if sys.platform.startswith("linux") else None
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                pos = 0
                for arr in pool.map(_decode_chunk, jobs):
                    out[pos:pos + len(arr)] = arr
                    pos += len(arr)
                    bar.update(len(arr))
    finally:
        bar.close()
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def cache_key(samples: list[Sample], size: int) -> str:
    """sha256 of the file list with sizes, mtimes, labels and the decoded size."""
    h = hashlib.sha256(f"{CACHE_FORMAT}|{size}|{len(samples)}".encode())
    for path, label in samples:
        try:
            st = os.stat(path)
        except OSError as e:
            raise UserError(f"cannot read image {path} ({e.strerror})") from None
        h.update(f"\n{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{label}".encode())
    return h.hexdigest()


class DecodedFolder:
    """The images of one folder, decoded on first use (memoised; cached on disk)."""

    def __init__(self, samples: list[Sample], size: int, *, cache_dir: str | Path | None = None,
                 workers: int = 0, progress: bool = True, name: str = "images"):
        self.samples = samples
        self.size = int(size)
        self.cache_dir = None if cache_dir == "" else (
            Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
        self.workers = workers
        self.progress = progress
        self.name = name
        self._tensor: torch.Tensor | None = None
        self.from_cache: bool | None = None

    def tensor(self) -> torch.Tensor:
        if self._tensor is None:
            self._tensor = self._load()
        return self._tensor

    def _load(self) -> torch.Tensor:
        if self.cache_dir is None:
            self.from_cache = False
            return self._decode()
        key = cache_key(self.samples, self.size)
        path = self.cache_dir / f"images-{key[:24]}.safetensors"
        if path.is_file():
            try:
                data = safetensors.torch.load(path.read_bytes())
                images = data["images"]
                if (images.dtype == torch.uint8
                        and tuple(images.shape) == (len(self.samples), 3, self.size, self.size)):
                    self.from_cache = True
                    return images
            except Exception:  # noqa: BLE001 - a damaged cache file is simply rebuilt
                pass
        images = self._decode()
        try:
            data = safetensors.torch.save(
                {"images": images}, metadata={"format": CACHE_FORMAT, "key": key})
            atomic_write_bytes(path, data, collective=False)  # a cache: whoever decoded
        except OSError as e:  # a read-only cache is not fatal: the next run decodes again
            log.warning("cannot write image cache %s (%s); continuing without it", path,
                        e.strerror)
        self.from_cache = False
        return images

    def _decode(self) -> torch.Tensor:
        return decode_files([p for p, _ in self.samples], self.size, workers=self.workers,
                            progress=self.progress, desc=f"decoding {self.name}")


class PendingImages:
    """Rows ``index`` of a :class:`DecodedFolder`, decoded when first asked for."""

    def __init__(self, folder: DecodedFolder, index: torch.Tensor | None = None):
        self.folder = folder
        self.index = (torch.arange(len(folder.samples)) if index is None
                      else torch.as_tensor(index, dtype=torch.int64))

    def __len__(self) -> int:
        return int(self.index.numel())

    def subset(self, indices: torch.Tensor) -> PendingImages:
        return PendingImages(self.folder, self.index[torch.as_tensor(indices, dtype=torch.int64)])

    def get(self) -> torch.Tensor:
        full = self.folder.tensor()
        if len(self) == full.shape[0] and torch.equal(self.index, torch.arange(len(self))):
            return full
        return full[self.index]
