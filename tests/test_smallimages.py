"""Folders of small images: decoded once into memory, cached without pickles, and the
preprocessing a model records used by every later command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resprune
from resprune import UserError
from resprune.cli.main import main
from resprune.data import load_dataset, make_loader


def _folder(root: Path, n_train: int = 6, n_test: int = 2, size: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in ("a", "b", "c"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def test_small_images_are_decoded_into_memory(tmp_path):
    root = _folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    b = load_dataset("imagefolder", root, val_fraction=0.25, cache_dir=cache, progress=False)
    assert b.in_memory and b.image_size == 12 and b.augment
    assert b.train.pending is not None and b.test.pending is not None  # nothing decoded yet
    ev = make_loader(b, "test", 4, train=False)
    assert isinstance(ev, resprune.data.InMemoryLoader)
    assert b.train.pending is not None  # the test split alone was decoded
    x, y = next(iter(ev))
    path = sorted((root / "test" / "a").iterdir())[0]
    want = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    mean = torch.tensor(b.mean).view(3, 1, 1)
    std = torch.tensor(b.std).view(3, 1, 1)
    assert torch.allclose(x[0], (want.float() / 255 - mean) / std, atol=1e-6)
    assert y.tolist() == [0, 0, 1, 1]
    tr = make_loader(b, "train", 5, train=True, seed=1)
    xs = torch.cat([x for x, _ in tr])
    assert xs.shape == (len(b.train), 3, 12, 12)  # pad-crop-flip keeps the size
    assert len(list(cache.glob("images-*.safetensors"))) == 2  # one per folder


def test_cache_is_reused_and_invalidated(tmp_path):
    root = _folder(tmp_path / "imgs")
    cache = tmp_path / "cache"

    def load():
        b = load_dataset("imagefolder", root, cache_dir=cache, progress=False)
        b.test.materialize()
        return b

    load()
    files = sorted(cache.glob("*.safetensors"))
    assert len(files) == 1
    b = load_dataset("imagefolder", root, cache_dir=cache, progress=False)
    folder = b.test.pending.folder
    b.test.materialize()
    assert folder.from_cache is True  # the second start read the cache
    # a changed image (size/mtime) is a new key: decoded again, the old entry stays valid
    p = root / "test" / "b" / "0.png"
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(p)
    os.utime(p, ns=(1, 1))
    b = load()
    assert len(list(cache.glob("*.safetensors"))) == 2
    assert int(b.test.images[2].sum()) == 0  # the new black image, not the cached old one
    # a damaged cache file is rebuilt, never trusted
    for f in cache.glob("*.safetensors"):
        f.write_bytes(b"garbage")
    b2 = load()
    assert torch.equal(b2.test.images, b.test.images)


def test_folder_layout_and_options(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "test").rename(root / "val")  # ImageNet-style val/ is the test split too
    b = load_dataset("imagefolder", root, cache_dir="", progress=False)  # "": no cache
    assert len(b.test) == 6 and b.in_memory
    b = load_dataset("imagefolder", root, in_memory=False, progress=False)
    assert not b.in_memory and b.image_size == 224  # large-image path on request
    b = load_dataset("imagefolder", root, image_size=8, cache_dir="", progress=False)
    x, _ = next(iter(make_loader(b, "test", 6, train=False)))
    assert x.shape == (6, 3, 8, 8)  # resized and center-cropped to the asked size


def test_preprocess_travels_and_is_used(tmp_path, capsys):
    base = tmp_path / "base"
    assert main(["train", "--model", "resnet8", "--width", "4", "--data", "synthetic",
                 "--epochs", "1", "--batch-size", "64", "--no-progress", "--out",
                 str(base)]) == 0
    pre = json.loads((base / "arch.json").read_text())["preprocess"]
    assert pre == {"input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "resize": None}
    # a model that records other statistics is evaluated with them, not the dataset's
    model = resprune.load(base)
    model.preprocess = {"input_size": 32, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.7],
                        "resize": None}
    other = tmp_path / "other"
    resprune.save(model, other)
    (other / "summary.json").write_text((base / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(other), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    bundle = load_dataset("synthetic", preprocess=model.preprocess)
    want = resprune.measure.evaluate(resprune.load(other),
                                     make_loader(bundle, "test", 256, train=False))
    assert got["top1"] == want["top1"] and got["loss"] == pytest.approx(want["loss"])
    # an input size the in-memory data cannot give is one line, exit 2
    model.preprocess = {**model.preprocess, "input_size": 40}
    resprune.save(model, other)
    assert main(["eval", str(other)]) == 2
    err = capsys.readouterr().err
    assert "expects 40x40 images but --data synthetic has 32x32" in err
    with pytest.raises(UserError, match="expects 40x40"):
        load_dataset("synthetic", preprocess=model.preprocess)


def test_old_runs_without_preprocess_keep_working(tmp_path, capsys):
    """A run written before preprocessing was recorded uses the dataset's defaults, and the
    next command's run records them."""
    base = tmp_path / "old"
    assert main(["train", "--model", "resnet8", "--width", "4", "--data", "synthetic",
                 "--epochs", "1", "--batch-size", "64", "--no-progress", "--out",
                 str(base)]) == 0
    spec = json.loads((base / "arch.json").read_text())
    del spec["preprocess"]
    (base / "arch.json").write_text(json.dumps(spec))
    assert resprune.load(base).preprocess is None
    out = tmp_path / "ft"
    assert main(["train", "--init", str(base), "--data", "synthetic", "--epochs", "0",
                 "--batch-size", "64", "--no-progress", "--out", str(out)]) == 0
    new = json.loads((out / "summary.json").read_text())
    old = json.loads((base / "summary.json").read_text())
    assert new["top1"] == old["top1"]  # same inputs as before: same accuracy
    assert json.loads((out / "arch.json").read_text())["preprocess"]["mean"] == [0.5] * 3
