import json
import os
import pickle

import pytest
import torch

import resprune
from resprune import UserError
from resprune.io import atomic_torch_save, atomic_write_bytes, safe_torch_load
from resprune.models import create

from .conftest import randomize_bn


def test_save_load_identical_logits(tmp_path):
    m = randomize_bn(create("resnet20", shortcut="A", gates=True)).eval()
    resprune.save(m, tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["arch.json", "model.safetensors"]
    m2 = resprune.load(tmp_path / "run").eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(m(x), m2(x))
    assert resprune.spec_of(m2) == resprune.spec_of(m)


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resprune.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a resprune run directory"):
        resprune.load(tmp_path / "empty")
    run = tmp_path / "run"
    resprune.save(create("resnet8", width=4), run)
    (run / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="not a valid safetensors file"):
        resprune.load(run)
    resprune.save(create("resnet8", width=4), run)
    (run / "arch.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        resprune.load(run)
    # weights of another architecture
    resprune.save(create("resnet8", width=4), run)
    resprune.save(create("resnet8", width=8), tmp_path / "other")
    os.replace(tmp_path / "other" / "arch.json", run / "arch.json")
    with pytest.raises(UserError, match="do not match arch.json"):
        resprune.load(run)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/resprune_pwned_marker",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the file is hostile on purpose
def test_malicious_pickle_is_refused(tmp_path):
    marker = "/tmp/resprune_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "train_state.pt"
    path.write_bytes(pickle.dumps({"epoch": 1, "x": _Evil()}))
    with pytest.raises(UserError, match="refusing to load"):
        safe_torch_load(path)
    assert not os.path.exists(marker)
    # a malicious model.safetensors is not a pickle at all: rejected as invalid
    run = tmp_path / "run"
    resprune.save(create("resnet8", width=4), run)
    (run / "model.safetensors").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(UserError, match=r"model.safetensors is not a valid safetensors file"):
        resprune.load(run)
    assert not os.path.exists(marker)


def test_safe_torch_load_roundtrip(tmp_path):
    state = {"epoch": 3, "t": torch.arange(5), "nested": [1.5, {"a": torch.ones(2)}]}
    atomic_torch_save(state, tmp_path / "s.pt")
    back = safe_torch_load(tmp_path / "s.pt")
    assert back["epoch"] == 3 and torch.equal(back["t"], state["t"])


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"old")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind


def test_arch_json_is_plain_json(tmp_path):
    resprune.save(create("resnet8", width=4), tmp_path)
    spec = json.loads((tmp_path / "arch.json").read_text())
    assert spec["arch"] == "resnet8" and spec["format"] == 1


def test_atomic_write_uses_normal_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644
