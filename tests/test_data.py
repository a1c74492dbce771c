"""Tests for resprune.data: CIFAR reader, safe unpickling, splits, loaders, other datasets."""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import struct
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resprune import data
from resprune.data import cifar, digits, imagefolder, loader, split, synthetic
from resprune.errors import UserError

MINI = Path(__file__).resolve().parents[1].parent / "shared/datasets/cifar10-mini"


# --------------------------------------------------------------------------- fixtures


def _batch(n: int, seed: int, num_classes: int = 10, label_key: bytes = b"labels") -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"test batch", label_key: rng.integers(0, num_classes, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}


def _dump(obj, path: Path, protocol: int = 4) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python-2 ``str`` opcodes, like the official archive's files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_str8(self, obj):
        b = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8


def _dump_py2(obj, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray\n",
                                            b"numpy.core.multiarray\n"))


@pytest.fixture
def c10(tmp_path: Path) -> Path:
    """A CIFAR-10 tree: two training batches of 7 and 5 images, a test batch of 4."""
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    _dump(_batch(7, 1), d / "data_batch_1")
    _dump(_batch(5, 2), d / "data_batch_2")
    _dump(_batch(4, 3), d / "test_batch")
    _dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, d / "batches.meta")
    return tmp_path


def _expected(batches: list[dict], key: bytes = b"labels"):
    x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    y = np.concatenate([b[key] for b in batches])
    return torch.from_numpy(x), torch.from_numpy(y)


# --------------------------------------------------------------------------- CIFAR reader


def test_cifar_reader_on_official_layout(c10: Path):
    x, y = _expected([_batch(7, 1), _batch(5, 2)])
    tx, ty = _expected([_batch(4, 3)])
    for root in (c10, c10 / "cifar-10-batches-py"):  # parent or batches dir
        d = cifar.load_cifar(root, "cifar10")
        assert d.train_images.dtype == torch.uint8 and d.train_labels.dtype == torch.int64
        assert d.train_images.shape == (12, 3, 32, 32) and d.test_images.shape == (4, 3, 32, 32)
        assert torch.equal(d.train_images, x) and torch.equal(d.train_labels, y)
        assert torch.equal(d.test_images, tx) and torch.equal(d.test_labels, ty)
        assert d.classes == [f"c{i}" for i in range(10)]


def test_cifar_batches_read_in_numeric_order(tmp_path: Path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i, n in ((10, 3), (2, 4), (1, 2)):
        _dump(_batch(n, i), d / f"data_batch_{i}")
    _dump(_batch(1, 99), d / "test_batch")
    got = cifar.load_cifar(tmp_path, "cifar10")
    x, y = _expected([_batch(2, 1), _batch(4, 2), _batch(3, 10)])
    assert torch.equal(got.train_images, x) and torch.equal(got.train_labels, y)
    assert got.classes == [str(i) for i in range(10)]  # no batches.meta


def test_cifar_reads_python2_pickles(tmp_path: Path):
    """The official archives hold protocol-2 Python-2 pickles naming numpy.core."""
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    b1, bt = _batch(6, 5), _batch(3, 6)
    _dump_py2(b1, d / "data_batch_1")
    _dump_py2(bt, d / "test_batch")
    assert b"numpy.core.multiarray\n_reconstruct" in (d / "test_batch").read_bytes()
    got = cifar.load_cifar(d, "cifar10")
    x, y = _expected([b1])
    assert torch.equal(got.train_images, x) and torch.equal(got.train_labels, y)


def test_cifar100_layout_uses_fine_labels(tmp_path: Path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    tr = _batch(9, 1, 100, b"fine_labels")
    tr[b"coarse_labels"] = [0] * 9
    te = _batch(3, 2, 100, b"fine_labels")
    _dump(tr, d / "train")
    _dump(te, d / "test")
    _dump({b"fine_label_names": [str(i).encode() for i in range(100)]}, d / "meta")
    b = data.load_dataset("cifar100", tmp_path, val_fraction=0.0)
    x, y = _expected([tr], b"fine_labels")
    assert b.num_classes == 100 and b.mean == data.CIFAR_STATS["cifar100"][0]
    assert torch.equal(b.train.images, x) and torch.equal(b.train.labels, y)
    assert len(b.val) == 0 and len(b.test) == 3


@pytest.mark.skipif(not MINI.is_dir(), reason="shared cifar10-mini not present")
def test_real_cifar10_mini():
    d = cifar.load_cifar(MINI, "cifar10")
    assert d.train_images.shape == (4068, 3, 32, 32) and d.test_images.shape == (1017, 3, 32, 32)
    assert d.train_labels.shape == (4068,) and d.test_labels.shape == (1017,)
    for lab in (d.train_labels, d.test_labels):
        assert lab.min() >= 0 and lab.max() <= 9 and len(lab.unique()) == 10
    assert d.classes[0] == "airplane" and d.classes[9] == "truck"
    b = data.load_dataset("cifar10", MINI, val_fraction=0.1, seed=0)
    assert len(b.val) == round(4068 * 0.1) == 407
    assert len(b.train) + len(b.val) == 4068 and len(b.test) == 1017
    assert data.input_shape(b) == (3, 32, 32) and b.std == (0.2470, 0.2435, 0.2616)


# --------------------------------------------------------------------------- unsafe pickles


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",))


@pytest.mark.parametrize("kind", ["system", "eval", "numpy_load"])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, kind: str):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    marker = tmp_path / "PWNED"
    if kind == "system":
        payload, refused = _Evil(marker), f"{os.system.__module__}.system"
    elif kind == "eval":
        payload, refused = _EvilEval(marker), "builtins.eval"
    else:  # a numpy global outside the allow-list is refused too
        class _NpLoad:
            def __reduce__(self):
                return (np.load, (str(marker),))
        payload, refused = _NpLoad(), "numpy.load"
    evil = _batch(3, 1)
    evil[b"labels"] = payload
    _dump(evil, d / "data_batch_1")
    _dump(_batch(2, 2), d / "test_batch")
    with pytest.raises(UserError) as e:
        data.load_dataset("cifar10", tmp_path)
    msg = str(e.value)
    assert f"refusing to unpickle {refused}" in msg and "not a CIFAR batch" in msg
    assert "data_batch_1" in msg
    assert not marker.exists()
    if kind != "numpy_load":  # the payload is live: plain pickle would have run it
        pickle.loads((d / "data_batch_1").read_bytes())
        assert marker.exists()


def test_unpickler_allow_list_is_exact():
    assert set(name for _, name in cifar._ALLOWED) <= {"ndarray", "dtype", "_reconstruct",
                                                       "_frombuffer"}
    u = cifar.BatchUnpickler(io.BytesIO(b""))
    with pytest.raises(UserError, match="refusing to unpickle numpy.frombuffer"):
        u.find_class("numpy", "frombuffer")


def test_protocol5_pickles_load(tmp_path: Path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    b1 = _batch(4, 1)
    _dump(b1, d / "data_batch_1", protocol=5)
    _dump(_batch(2, 2), d / "test_batch", protocol=5)
    got = cifar.load_cifar(tmp_path, "cifar10")
    assert torch.equal(got.train_images, _expected([b1])[0])


# --------------------------------------------------------------------------- bad input


def _tree(tmp_path: Path) -> Path:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    _dump(_batch(3, 1), d / "data_batch_1")
    _dump(_batch(2, 2), d / "test_batch")
    return d


@pytest.mark.parametrize("content, why", [
    (b"this is not a pickle at all", "corrupt"),
    (pickle.dumps(_batch(3, 1))[:500], "corrupt"),  # truncated
    (pickle.dumps([1, 2, 3]), "expected a dict"),
    (pickle.dumps({b"labels": [1]}), "missing b'data'"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}), "shape"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}), "2 integer labels"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 10]}), "outside 0..9"),
])
def test_corrupt_batch_gives_user_error(tmp_path: Path, content: bytes, why: str):
    d = _tree(tmp_path)
    (d / "data_batch_1").write_bytes(content)
    with pytest.raises(UserError, match="data_batch_1") as e:
        data.load_dataset("cifar10", tmp_path)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_missing_and_malformed_dirs(tmp_path: Path):
    with pytest.raises(UserError, match="needs a data directory.*--data-dir.*--download"):
        data.load_dataset("cifar10")
    with pytest.raises(UserError, match="does not exist.*--download"):
        data.load_dataset("cifar10", tmp_path / "nope")
    with pytest.raises(UserError, match=r"cifar-10-batches-py/.*data_batch_1..5.*--download"):
        data.load_dataset("cifar10", tmp_path)
    with pytest.raises(UserError, match=r"cifar-100-python/ \(train, test, meta\)"):
        data.load_dataset("cifar100", tmp_path)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    _dump(_batch(2, 2), d / "test_batch")
    with pytest.raises(UserError, match="has no training batches"):
        data.load_dataset("cifar10", tmp_path)
    (d / "test_batch").rename(d / "data_batch_1")
    with pytest.raises(UserError, match="has no test_batch"):
        data.load_dataset("cifar10", tmp_path)


def test_unknown_names_and_options(c10: Path):
    with pytest.raises(UserError, match="unknown dataset 'mnist'; choose one of: cifar10, "
                                        "cifar100, imagefolder, digits, synthetic"):
        data.load_dataset("mnist")
    with pytest.raises(UserError, match="not valid for dataset cifar10"):
        data.load_dataset("cifar10", c10, num_classes=3)
    with pytest.raises(UserError, match="option.*bogus.*synthetic.*valid: augment"):
        data.load_dataset("synthetic", bogus=1)
    b = data.load_dataset("cifar10", c10, val_fraction=0.0)
    with pytest.raises(UserError, match="unknown split 'dev'"):
        data.make_loader(b, "dev", 4, train=False)
    with pytest.raises(UserError, match="batch size must be a positive integer"):
        data.make_loader(b, "train", 0, train=True)


# --------------------------------------------------------------------------- download


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def test_download_without_network(tmp_path: Path, monkeypatch):
    def offline(url, timeout=None):
        assert timeout is not None and timeout <= 60
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(cifar.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=r"cannot download cifar10 from https://www.cs.toronto"
                                        r".*Name or service not known.*network"):
        data.load_dataset("cifar10", tmp_path / "new", download=True)
    assert list((tmp_path / "new").iterdir()) == []  # no partial archive left


def test_download_verifies_md5_and_extracts(tmp_path: Path, monkeypatch):
    members = {"cifar-10-batches-py/data_batch_1": pickle.dumps(_batch(3, 1)),
               "cifar-10-batches-py/test_batch": pickle.dumps(_batch(2, 2))}
    blob = _tarball(members)
    calls = []

    def fake(url, timeout=None):
        calls.append(url)
        return _FakeResponse(blob)

    monkeypatch.setattr(cifar.urllib.request, "urlopen", fake)
    with pytest.raises(UserError, match="MD5 .* expected c58f30108f718f92721af3b95e74349a"):
        cifar.download(tmp_path, "cifar10")
    assert list(tmp_path.iterdir()) == []
    spec = cifar.SPECS["cifar10"]
    monkeypatch.setitem(cifar.SPECS, "cifar10", cifar.CifarSpec(
        **{**spec.__dict__, "md5": hashlib.md5(blob).hexdigest()}))
    assert cifar.download(tmp_path, "cifar10") == tmp_path / "cifar-10-batches-py"
    assert calls == [spec.url] * 2
    b = data.load_dataset("cifar10", tmp_path, download=True, val_fraction=0.0)
    assert len(b.train) == 3 and len(b.test) == 2 and len(calls) == 2  # no second fetch


def test_download_refuses_archive_escaping_root(tmp_path: Path, monkeypatch):
    blob = _tarball({"../escaped": b"x"})
    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda url, timeout=None:
                        _FakeResponse(blob))
    spec = cifar.SPECS["cifar10"]
    monkeypatch.setitem(cifar.SPECS, "cifar10", cifar.CifarSpec(
        **{**spec.__dict__, "md5": hashlib.md5(blob).hexdigest()}))
    root = tmp_path / "root"
    with pytest.raises(UserError, match="cannot extract"):
        cifar.download(root, "cifar10")
    assert not (tmp_path / "escaped").exists()


# --------------------------------------------------------------------------- split


def test_split_deterministic_stratified_disjoint():
    g = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([50, 33, 17, 101, 9])])
    labels = labels[torch.randperm(len(labels), generator=g)]
    n = len(labels)
    for f in (0.1, 0.25, 0.5):
        tr, va = split.stratified_split(labels, f, seed=3)
        tr2, va2 = split.stratified_split(labels, f, seed=3)
        assert torch.equal(tr, tr2) and torch.equal(va, va2)
        assert len(va) == math.floor(n * f + 0.5) and len(tr) == n - len(va)
        assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(n))
        assert torch.all(tr[1:] > tr[:-1]) and torch.all(va[1:] > va[:-1])
        for c, nc in enumerate([50, 33, 17, 101, 9]):
            k = int((labels[va] == c).sum())
            assert math.floor(nc * f) <= k <= math.ceil(nc * f)
    _, other = split.stratified_split(labels, 0.25, seed=4)
    assert not torch.equal(other, split.stratified_split(labels, 0.25, seed=3)[1])


def test_split_fraction_bounds():
    labels = torch.arange(20) % 4
    tr, va = split.stratified_split(labels, 0.0)
    assert len(va) == 0 and torch.equal(tr, torch.arange(20))
    for bad in (1.0, -0.1, 1.5, float("nan"), "x"):
        with pytest.raises(UserError, match="val_fraction must be"):
            split.stratified_split(labels, bad)
        with pytest.raises(UserError, match="val_fraction must be"):
            data.load_dataset("synthetic", val_fraction=bad)
    with pytest.raises(UserError, match="leaves no training samples"):
        split.stratified_split(torch.tensor([0]), 0.6)


def test_bundle_split_sizes(c10: Path):
    b = data.load_dataset("cifar10", c10, val_fraction=0.25, seed=1)
    assert len(b.val) == 3 and len(b.train) == 9  # 12 * 0.25
    full = cifar.load_cifar(c10, "cifar10")
    tr, va = split.stratified_split(full.train_labels, 0.25, 1)
    assert torch.equal(b.val.images, full.train_images[va])
    assert torch.equal(b.train.labels, full.train_labels[tr])


# --------------------------------------------------------------------------- loader


def _tagged(n: int = 10, c: int = 3, h: int = 8, w: int = 8):
    """Random images with labels = their index, so a batch tells which images it holds."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    return x, torch.arange(n)


def _loader(x, y, bs=4, **kw):
    c = x.shape[1]
    kw.setdefault("train", True)
    return loader.InMemoryLoader(x, y, bs, mean=(0.5,) * c, std=(0.25,) * c, **kw)


def _collect(ld):
    xs, ys = zip(*list(ld))
    return torch.cat(xs), torch.cat(ys)


def test_loader_epoch_reproducible_and_epochs_differ():
    x, y = _tagged(23)
    a, b = _loader(x, y, seed=7), _loader(x, y, seed=7)
    for e in (0, 3):
        a.set_epoch(e)
        b.set_epoch(e)
        xa, ya = _collect(a)
        xb, yb = _collect(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(3)
    x3, y3 = _collect(a)
    x4, y4 = _collect(a)  # iterating advances to epoch 4
    assert a.epoch == 5 and not torch.equal(y3, y4) and not torch.equal(x3, x4)
    a.set_epoch(4)
    assert torch.equal(_collect(a)[0], x4)
    assert sorted(y3.tolist()) == list(range(23))  # a permutation of all samples
    c = _loader(x, y, seed=8)
    c.set_epoch(3)
    assert not torch.equal(_collect(c)[1], y3)


def test_loader_eval_order_normalisation_and_last_batch():
    x, y = _tagged(10)
    ld = _loader(x, y, bs=4, train=False, seed=5)
    assert len(ld) == 3 and ld.num_samples == 10 and ld.batch_size == 4
    batches = list(ld)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    xs, ys = _collect(ld)
    assert torch.equal(ys, torch.arange(10))
    ld.set_epoch(9)
    assert torch.equal(_collect(ld)[0], xs)  # eval is the same every epoch
    assert xs.dtype == torch.float32 and batches[0][1].dtype == torch.int64
    manual = (x.double() / 255 - 0.5) / 0.25
    assert torch.allclose(xs.double(), manual, atol=1e-5)
    assert xs[0, 0, 0, 0].item() == pytest.approx((x[0, 0, 0, 0].item() / 255 - 0.5) / 0.25,
                                                  abs=1e-6)


def test_loader_per_channel_normalisation():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    ld = loader.InMemoryLoader(x.contiguous(), torch.zeros(2, dtype=torch.int64), 2, train=False,
                               mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    out, _ = next(iter(ld))
    want = torch.tensor([(0 - 0.1) / 0.5, (0.2 - 0.2) / 0.25, (1 - 0.3) / 0.125])
    assert torch.allclose(out[:, :, 0, 0], want.expand(2, 3), atol=1e-6)


def test_loader_drop_last_and_no_augment():
    x, y = _tagged(10)
    assert len(_loader(x, y, bs=4)) == 3
    ld = _loader(x, y, bs=4, drop_last=True)
    assert len(ld) == 2 and sum(b[0].shape[0] for b in ld) == 8
    assert len(_loader(x, y, bs=4, train=False, drop_last=True)) == 3  # eval keeps all
    plain = _loader(x, y, bs=3, augment=False)
    xs, ys = _collect(plain)
    assert torch.allclose(xs, ((x[ys].float() / 255 - 0.5) / 0.25), rtol=0, atol=1e-6)
    assert len(_loader(x[:0], y[:0], bs=4, train=False)) == 0
    assert list(_loader(x[:0], y[:0], bs=4, train=False)) == []


def test_augmentation_is_pad_crop_flip_of_original():
    x, y = _tagged(16, c=2, h=6, w=5)
    ld = loader.InMemoryLoader(x, y, 16, train=True, mean=(0, 0), std=(1 / 255, 1 / 255),
                               seed=1, pad=4)
    out, ys = next(iter(ld))
    assert out.shape == (16, 2, 6, 5)
    out = out.round().to(torch.uint8)  # undo the identity-like normalisation exactly
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    seen_flip = seen_shift = False
    for b in range(16):
        src = padded[ys[b]]
        found = [(r, c, f) for r in range(9) for c in range(9) for f in (False, True)
                 if torch.equal(out[b], (src[:, r:r + 6, c:c + 5].flip(-1) if f
                                         else src[:, r:r + 6, c:c + 5]))]
        assert found, f"sample {b} is not a pad-crop(-flip) of image {ys[b]}"
        seen_flip |= any(f for _, _, f in found)
        seen_shift |= any((r, c) != (4, 4) for r, c, _ in found)
    assert seen_flip and seen_shift


def test_pad_crop_flip_matches_slicing():
    x, _ = _tagged(3, c=2, h=4, w=4)
    off = torch.tensor([[0, 0], [2, 1], [2, 2], [4, 4]])
    x = torch.cat([x, x[:1]])
    flips = torch.tensor([False, True, False, False])
    out = loader.pad_crop_flip(x, off, flips, 2)
    p = torch.nn.functional.pad(x, (2, 2, 2, 2))
    assert torch.equal(out[0], p[0, :, 0:4, 0:4])
    assert torch.equal(out[1], p[1, :, 2:6, 1:5].flip(-1))
    assert torch.equal(out[2], x[2])  # offset == pad is the identity
    assert torch.equal(out[3], p[3, :, 4:8, 4:8])


def test_channels_last_and_make_loader():
    b = data.load_dataset("synthetic", image_size=8, train_size=40, test_size=12, augment=True)
    ld = data.make_loader(b, "train", 8, train=True, channels_last=True, seed=2)
    xb, yb = next(iter(ld))
    assert xb.is_contiguous(memory_format=torch.channels_last) and xb.shape == (8, 3, 8, 8)
    assert ld.augment and isinstance(ld, data.InMemoryLoader)
    ev = data.make_loader(b, "test", 5, train=False)
    assert len(ev) == 3 and not ev.augment
    assert torch.equal(_collect(ev)[1], b.test.labels)


# --------------------------------------------------------------------------- digits


def test_digits_dataset():
    b = data.load_dataset("digits", val_fraction=0.1, seed=0)
    assert len(b.train) + len(b.val) + len(b.test) == 1797
    assert len(b.test) == math.floor(1797 * 0.2 + 0.5) == 359
    assert len(b.val) == math.floor(1438 * 0.1 + 0.5)
    assert b.train.images.shape[1:] == (1, 16, 16) and b.train.images.dtype == torch.uint8
    assert data.input_shape(b) == (1, 16, 16) and b.num_classes == 10 and not b.augment
    assert int(b.train.images.max()) == 255 and int(b.train.images.min()) == 0
    b2 = data.load_dataset("digits", val_fraction=0.1, seed=1)
    assert torch.equal(b.test.images, b2.test.images)  # the test set never moves
    assert not torch.equal(b.val.labels, b2.val.labels) or not torch.equal(b.val.images,
                                                                           b2.val.images)
    xb, yb = next(iter(data.make_loader(b, "train", 32, train=True)))
    assert xb.shape == (32, 1, 16, 16) and yb.max() <= 9
    raw, _ = digits._load_raw()
    up = digits.to_uint8_images(raw[:1], size=8)
    assert torch.equal(up[0, 0], (raw[0] / 16 * 255).round().to(torch.uint8))


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(UserError, match=r"install resprune\[demo\]"):
        data.load_dataset("digits")


# --------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_learnable():
    x1, y1 = synthetic.make_synthetic(200, num_classes=5, channels=2, size=12, seed=3)
    x2, y2 = synthetic.make_synthetic(200, num_classes=5, channels=2, size=12, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (200, 2, 12, 12) and x1.dtype == torch.uint8
    assert torch.bincount(y1).tolist() == [40] * 5
    xt, yt = synthetic.make_synthetic(100, num_classes=5, channels=2, size=12, seed=4,
                                      pattern_seed=3)
    centroids = torch.stack([x1[y1 == c].float().mean(0) for c in range(5)])
    d = torch.cdist(xt.float().flatten(1), centroids.flatten(1))
    assert (d.argmin(1) == yt).float().mean() > 0.9  # nearest class mean already separates
    with pytest.raises(UserError, match="num_classes must be an integer >= 2"):
        synthetic.make_synthetic(10, num_classes=1)
    b = data.load_dataset("synthetic", num_classes=4, channels=1, image_size=8, train_size=40,
                          test_size=8, val_fraction=0.25)
    assert (len(b.train), len(b.val), len(b.test)) == (30, 10, 8)
    assert data.input_shape(b) == (1, 8, 8) and b.describe()["val"] == 10


# --------------------------------------------------------------------------- image folder


def _png(path: Path, w: int, h: int, seed: int, mode: str = "RGB") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return arr


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    sizes = [(40, 30), (30, 50), (64, 64), (35, 33)]
    for split_name, n in (("train", 4), ("val", 2)):
        for ci, cls in enumerate(("zebra", "ant", "cat")):
            for i in range(n):
                w, h = sizes[(i + ci) % 4]
                _png(tmp_path / split_name / cls / f"{i}.png", w, h, seed=ci * 10 + i,
                     mode="L" if i == 1 else "RGB")
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    return tmp_path


def test_imagefolder_dataset_and_loaders(folder: Path):
    b = data.load_dataset("imagefolder", folder, val_fraction=0.25, seed=0,
                          image_size=24, resize_size=28, in_memory=False)
    assert b.classes == ["ant", "cat", "zebra"] and b.num_classes == 3
    assert (len(b.train), len(b.val), len(b.test)) == (9, 3, 6)
    assert sorted(b.val.labels.tolist()) == [0, 1, 2]  # one per class
    assert b.mean == imagefolder.IMAGENET_MEAN and data.input_shape(b) == (3, 24, 24)

    ev = data.make_loader(b, "test", 4, train=False)
    assert isinstance(ev, data.ImageFolderLoader) and len(ev) == 2
    xs, ys = _collect(ev)
    assert xs.shape == (6, 3, 24, 24) and ys.tolist() == [0, 0, 1, 1, 2, 2]
    path = b.test.samples[0][0]
    img = Image.open(path).convert("RGB")
    manual = imagefolder.center_crop(imagefolder.resize_shorter(img, 28), 24)
    want = torch.from_numpy(np.array(manual)).permute(2, 0, 1).float() / 255
    mean = torch.tensor(b.mean).view(3, 1, 1)
    std = torch.tensor(b.std).view(3, 1, 1)
    assert torch.allclose(xs[0], (want - mean) / std, atol=1e-5)

    tr = data.make_loader(b, "train", 4, train=True, seed=3)
    tr.set_epoch(2)
    a = _collect(tr)
    tr.set_epoch(2)
    assert all(torch.equal(u, v) for u, v in zip(a, _collect(tr)))
    tr.set_epoch(3)
    assert not torch.equal(a[0], _collect(tr)[0])
    assert a[0].shape == (9, 3, 24, 24) and sorted(a[1].tolist()) == sorted(b.train.labels.tolist())


def test_imagefolder_workers_give_same_batches(folder: Path):
    b = data.load_dataset("imagefolder", folder, val_fraction=0.0, image_size=16,
                          resize_size=20, in_memory=False)
    runs = []
    for workers in (0, 1):
        ld = data.make_loader(b, "train", 5, train=True, seed=1, num_workers=workers)
        _collect(ld)  # epoch 0 first: the persistent worker must not keep epoch 0's crops
        ld.set_epoch(4)
        runs.append(_collect(ld))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    fresh = data.make_loader(b, "train", 5, train=True, seed=1)
    fresh.set_epoch(4)
    assert torch.equal(_collect(fresh)[0], runs[1][0])
    assert runs[1][0].is_contiguous()  # NCHW unless channels_last was asked for


def test_imagefolder_default_imagenet_shapes(folder: Path):
    b = data.load_dataset("imagefolder", folder, val_fraction=0.0, in_memory=False)
    x, y = next(iter(data.make_loader(b, "val" if len(b.val) else "test", 2, train=False)))
    assert x.shape == (2, 3, 224, 224)
    x, y = next(iter(data.make_loader(b, "train", 2, train=True)))
    assert x.shape == (2, 3, 224, 224)


def test_random_resized_crop_box_bounds():
    rng = np.random.default_rng(0)
    for w, h in ((100, 80), (37, 200), (500, 20)):
        for _ in range(200):
            left, top, bw, bh = imagefolder.random_resized_crop_box(w, h, rng)
            assert 0 <= left and 0 <= top and left + bw <= w and top + bh <= h and bw and bh
    # a draw that fits respects the area and (up to rounding) ratio ranges
    for _ in range(200):
        left, top, bw, bh = imagefolder.random_resized_crop_box(1000, 1000, rng)
        assert 0.08 * 1e6 * 0.97 <= bw * bh <= 1e6
        assert 3 / 4 - 0.01 <= bw / bh <= 4 / 3 + 0.01


def test_imagefolder_errors(tmp_path: Path, folder: Path):
    with pytest.raises(UserError, match="needs a data directory"):
        data.load_dataset("imagefolder")
    with pytest.raises(UserError, match="no test/ or val/ folder"):
        (tmp_path / "only" / "train" / "a").mkdir(parents=True)
        data.load_dataset("imagefolder", tmp_path / "only")
    (folder / "val" / "eel").mkdir()
    _png(folder / "val" / "eel" / "0.png", 8, 8, 0)
    with pytest.raises(UserError, match="missing from train: eel"):
        data.load_dataset("imagefolder", folder)
    (folder / "val" / "eel" / "0.png").unlink()
    (folder / "val" / "eel").rmdir()
    (folder / "train" / "empty").mkdir()
    with pytest.raises(UserError, match="class folder .*empty has no images"):
        data.load_dataset("imagefolder", folder)
    (folder / "train" / "empty").rmdir()
    bad = folder / "val" / "cat" / "0.png"
    bad.write_bytes(b"garbage")
    b = data.load_dataset("imagefolder", folder, image_size=16, resize_size=16, in_memory=False)
    for workers in (0, 1):
        with pytest.raises(UserError, match=r"^cannot decode image .*cat/0.png") as e:
            list(data.make_loader(b, "test", 8, train=False, num_workers=workers))
        assert "\n" not in str(e.value)
