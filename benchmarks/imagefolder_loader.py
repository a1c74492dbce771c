"""Large-image folders (the ImageNet path): images/s decoded and augmented per worker count.

Generates a folder of JPEGs (``--size`` px on the shorter side, natural-image-like content:
smooth gradients, blobs and noise, quality 90), then reads it with resprune's
``ImageFolderLoader`` exactly as training does (random-resized crop to 224 + flip, uint8
batches, normalised on the device) for each worker count, and the evaluation transform
(resize 256 + center crop 224). Two passes per setting; the first includes starting the
worker processes, the second is the steady state. No model runs: this is the loader's own
ceiling, the number a training step must not wait for.

    .venv/bin/python benchmarks/imagefolder_loader.py [--images 1536] [--workers 0 1 2]

Results: ``benchmarks/results/imagefolder_loader.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, md_table  # noqa: E402

from resprune.data.imagefolder import ImageFolderLoader, scan  # noqa: E402


def make_folder(root: Path, images: int, classes: int, size: int, seed: int = 0) -> None:
    """``images`` JPEGs in ``classes`` class folders, shorter side ``size`` (4:3 landscape)."""
    rng = np.random.default_rng(seed)
    h, w = size, round(size * 4 / 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(images):
        c = root / f"class{i % classes:03d}"
        c.mkdir(parents=True, exist_ok=True)
        img = np.zeros((h, w, 3), np.float32)
        for ch in range(3):
            a, b = rng.uniform(-1, 1, 2)
            img[..., ch] = 128 + 60 * np.sin(a * xx / 40 + b * yy / 30 + rng.uniform(0, 6))
        for _ in range(6):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, size / 3)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
            img[mask] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 8, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(c / f"{i:06d}.jpg", quality=90)


def images_per_s(loader: ImageFolderLoader, passes: int = 2) -> tuple[list[float], float]:
    """Images/s of each pass, and CPU ms per image of this process in the last pass (with 0
    workers: all the decoding and augmenting; robust to other load on the machine)."""
    rates, cpu_ms = [], 0.0
    for epoch in range(passes):
        loader.set_epoch(epoch)
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        for x, _ in loader:
            n += int(x.shape[0])
        rates.append(n / (time.perf_counter() - t0))
        cpu_ms = 1000 * (time.process_time() - c0) / n
    return rates, cpu_ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1536)
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--size", type=int, default=224, help="shorter side of the JPEGs (224)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dir", type=Path, default=None, help="keep the generated folder here")
    p.add_argument("--out", type=Path, default=RESULTS / "imagefolder_loader.md")
    a = p.parse_args(argv)
    root = a.dir or Path(tempfile.mkdtemp(prefix="resprune-jpegs-"))
    try:
        t0 = time.perf_counter()
        if not any(root.glob("class*")):
            make_folder(root, a.images, a.classes, a.size)
        made = time.perf_counter() - t0
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        samples = scan(root, classes)
        body = []
        for mode in ("train", "eval"):
            for w in a.workers:
                loader = ImageFolderLoader(samples, a.batch_size, train=mode == "train",
                                           num_workers=w, seed=0)
                (first, steady), cpu_ms = images_per_s(loader)
                body.append([mode, w, f"{first:.0f}", f"{steady:.0f}",
                             f"{steady / max(w, 1):.0f}", f"{cpu_ms:.2f}"])
                print(mode, w, round(first), round(steady), round(cpu_ms, 2), flush=True)
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    cmd = "python benchmarks/imagefolder_loader.py " + " ".join(argv or sys.argv[1:])
    head = ["transform", "workers", "images/s, pass 1 (with worker start)",
            "images/s, pass 2", "images/s per worker (pass 2)",
            "CPU ms per image in the main process (pass 2)"]
    text = "\n".join([
        "# Image-folder loader throughput (large images, the ImageNet path)\n",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {machine_info(1)}; {os.cpu_count()} CPUs visible.  ",
        f"Data: {len(samples)} generated JPEGs, shorter side {a.size} px (4:3), "
        f"{len(classes)} classes, made in {made:.1f} s; batch {a.batch_size}; train = "
        "random-resized crop 224 + flip, eval = resize 256 + center crop 224; uint8 "
        "batches, normalised in the main process.\n",
        md_table(head, body),
    ])
    a.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
