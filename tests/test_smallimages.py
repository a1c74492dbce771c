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


def _decoded(folder: Path) -> tuple[torch.Tensor, list[int]]:
    """The images under ``folder/<class>/`` in scan order, as uint8 [N, 3, H, W], and labels."""
    xs, ys = [], []
    for label, cls in enumerate(("a", "b", "c")):
        for path in sorted((folder / cls).iterdir()):
            xs.append(torch.from_numpy(np.array(Image.open(path).convert("RGB"))))
            ys.append(label)
    return torch.stack(xs).permute(0, 3, 1, 2), ys


@pytest.mark.parametrize("in_memory", [True, False])
def test_held_out_val_folder_is_the_validation_split(tmp_path, capsys, in_memory):
    """train/ + val/ + test/: val/ is the validation split, all of train/ trains, and
    --val-fraction / --seed change nothing."""
    root = _folder(tmp_path / "imgs", n_train=6, n_test=3)
    (root / "test").rename(root / "val")
    _folder(tmp_path / "other", n_train=1, n_test=2)
    (tmp_path / "other" / "test").rename(root / "test")
    for fraction, seed in ((0.1, 0), (0.5, 3)):
        b = load_dataset("imagefolder", root, val_fraction=fraction, seed=seed, cache_dir="",
                         in_memory=in_memory, progress=False)
        assert (len(b.train), len(b.val), len(b.test)) == (18, 9, 6)
        assert b.val_folder == str(root / "val") and b.describe()["val_folder"] == b.val_folder
        assert resprune.data.data_info(b)["val"] == 9
    if in_memory:
        want, labels = _decoded(root / "val")
        ev = make_loader(b, "val", 9, train=False)
        x, y = next(iter(ev))
        mean = torch.tensor(b.mean).view(1, 3, 1, 1)
        std = torch.tensor(b.std).view(1, 3, 1, 1)
        assert torch.allclose(x, (want.float() / 255 - mean) / std, atol=1e-6)
        assert y.tolist() == labels
        train_x, _ = next(iter(make_loader(b, "train", 18, train=False)))
        want_train = _decoded(root / "train")[0]  # all of train/, in order: nothing carved
        assert torch.allclose(train_x, (want_train.float() / 255 - mean) / std, atol=1e-6)
    else:
        assert [p for p, _ in b.val.samples] == [
            str(p) for c in ("a", "b", "c") for p in sorted((root / "val" / c).iterdir())]
    # a class in val/ that train/ lacks: one line, exit 2
    (root / "val" / "zebra").mkdir()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "val" / "zebra" / "0.png")
    with pytest.raises(UserError, match=r"val has class folders missing from train: zebra"):
        load_dataset("imagefolder", root, cache_dir="", progress=False)


def test_commands_decide_on_the_held_out_val_folder(tmp_path, capsys):
    root = _folder(tmp_path / "imgs", n_train=4, n_test=2)
    (root / "test").rename(root / "val")
    _folder(tmp_path / "other", n_train=1, n_test=1)
    (tmp_path / "other" / "test").rename(root / "test")
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet8", "--width", "4", "--data", "imagefolder",
                 "--data-dir", str(root), "--cache-dir", "", "--epochs", "1", "--batch-size",
                 "4", "--no-progress", "--out", str(run)]) == 0
    data = json.loads((run / "summary.json").read_text())["data"]
    assert (data["train"], data["val"], data["test"]) == (12, 6, 3)
    assert data["val_folder"] == str(root / "val")
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val", "--cache-dir", "", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    b = load_dataset("imagefolder", root, cache_dir="", progress=False)
    want = resprune.measure.evaluate(resprune.load(run), make_loader(b, "val", 6, train=False))
    assert got["n"] == 6 and got["top1"] == want["top1"]
