"""resprune.export: ONNX / TorchScript files that reproduce PyTorch, written atomically.

The models look pruned: reduced and uneven widths, a zero-padding shortcut whose index map is
arbitrary (with zero channels), priority gates away from 1, an erased unit (nn.Identity), and
randomised BN statistics, so that a wrong channel map or a dropped op changes the logits.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from resprune import UserError, build, create, spec_of
from resprune.export import FORMATS, export
from resprune.export import api as export_api

SHAPE = (3, 32, 32)




def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics/affine parameters and gates, so every op matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.fill_(0.6 + 0.1 * torch.rand((), generator=g).item())
    return model.eval()


def _pad_map(cin: int, cout: int, seed: int) -> list[int]:
    """An arbitrary pruned-looking index map: input channels shuffled into random slots."""
    rng = np.random.default_rng(seed)
    index = [-1] * cout
    chosen = rng.choice(cout, size=min(cin, cout - 2), replace=False)
    for slot, ch in zip(chosen, rng.permutation(cin)):
        index[int(slot)] = int(ch)
    return index


def _pruned_a() -> torch.nn.Module:
    """ResNet-8 (option A) with reduced widths, arbitrary pad maps and a gate."""
    spec = spec_of(create("resnet8", width=8))
    spec["stem_width"] = 6
    (u1,), (u2,), (u3,) = spec["stages"]
    u1.update({"in": 6, "widths": [5], "out": 6, "gate": True})
    u2.update({"in": 6, "widths": [11], "out": 13, "shortcut": {"pad": _pad_map(6, 13, 1)}})
    u3.update({"in": 13, "widths": [17], "out": 27, "shortcut": {"pad": _pad_map(13, 27, 2)}})
    assert -1 in u2["shortcut"]["pad"] and -1 in u3["shortcut"]["pad"]
    return _randomise(build(spec), 1)


def _pruned_b() -> torch.nn.Module:
    """ResNet-8 (option B, 1x1 conv + BN projections) with reduced widths and a gate."""
    spec = spec_of(create("resnet8", width=8, shortcut="B"))
    spec["stem_width"] = 7
    (u1,), (u2,), (u3,) = spec["stages"]
    u1.update({"in": 7, "widths": [3], "out": 7, "gate": True})
    u2.update({"in": 7, "widths": [9], "out": 12})
    u3.update({"in": 12, "widths": [21], "out": 19})
    assert u2["shortcut"] == "conv" and u3["shortcut"] == "conv"
    return _randomise(build(spec), 2)


def _pruned_resnext() -> torch.nn.Module:
    """ResNeXt-29 (2 x 4d) with reduced even widths, gates and one erased unit (layer2.1)."""
    spec = spec_of(create("resnext29", cardinality=2, base_width=4, width=8, gates=True))
    spec["stem_width"] = 6
    outs = [20, 40, 100]
    inner = [[[6, 4], [4, 6], [8, 2]], [[10, 12], [14, 8], [14, 16]],
             [[22, 18], [20, 24], [30, 32]]]
    cin = 6
    for s, units in enumerate(spec["stages"]):
        for i, u in enumerate(units):
            u.update({"in": cin, "widths": inner[s][i], "out": outs[s]})
            cin = outs[s]
    spec["stages"][1][1] = {"erased": True, "in": 40, "out": 40}
    model = _randomise(build(spec), 3)
    assert isinstance(model.layer2[1], torch.nn.Identity)
    assert sum(n.endswith("gate") for n, _ in model.named_parameters()) == 5
    return model


MODELS = {"pruned_a": _pruned_a, "pruned_b": _pruned_b, "pruned_resnext": _pruned_resnext}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _run_file(path: str, fmt: str, x: torch.Tensor) -> torch.Tensor:
    """Run an exported file independently of resprune.export's own runners."""
    if fmt == "onnx":
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit
        module = torch.jit.load(path, map_location="cpu")
    with torch.no_grad():
        return module(x)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(MODELS))
def test_export_matches_pytorch(tmp_path, name: str, fmt: str) -> None:
    model = MODELS[name]()
    model.train()  # export must use eval mode on a copy, leaving the caller's mode alone
    path = tmp_path / f"model.{fmt}"
    info = export(model, path, format=fmt, input_shape=SHAPE)
    assert model.training
    model.eval()

    assert info["path"] == str(path) and info["format"] == fmt
    assert info["bytes"] == path.stat().st_size > 0
    assert info["params"] == _params(model)
    assert info["batch_sizes"] == [1, 3]
    assert 0 <= info["max_abs_diff"] <= 1e-4
    assert info["input_shape"] == list(SHAPE)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind

    # independent re-check from disk, at a batch size the export never saw
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x)
    got = _run_file(str(path), fmt, x)
    assert got.shape == expected.shape == (5, 10)
    assert (got - expected).abs().max().item() <= 1e-4

    if fmt == "onnx":
        graph = onnx.load(str(path)).graph
        dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in (*graph.input, *graph.output)]
        assert dims == [["batch", *SHAPE], ["batch", 10]]
        assert not any(n.metadata_props for n in graph.node)  # no stack traces / local paths


@pytest.mark.threads(2)
def test_onnx_check_runs_multi_threaded_like_torch(tmp_path) -> None:
    """The multi-threaded path: the parity session takes torch's thread count (2 here)."""
    from resprune.export._onnx import onnx_runner

    assert torch.get_num_threads() == 2
    model = MODELS["pruned_a"]().eval()
    path = tmp_path / "model.onnx"
    info = export(model, path, format="onnx", input_shape=SHAPE)
    assert info["max_abs_diff"] <= 1e-4
    run = onnx_runner(path.read_bytes())
    assert run.threads == 2
    # every resprune session (checks, timings, tables, profiles) waits without spinning, so
    # sessions timed interleaved do not steal each other's cores
    from resprune.export._onnx import session_options

    opts = session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (run(x) - model(x)).abs().max().item() <= 1e-4


def test_smaller_model_gives_smaller_onnx_close_to_4_bytes_per_param(tmp_path) -> None:
    big = _randomise(create("resnet8", width=32), 4)
    spec = spec_of(big)
    spec["stem_width"] = 24
    (u1,), (u2,), (u3,) = spec["stages"]
    u1.update({"in": 24, "widths": [20], "out": 24})
    u2.update({"in": 24, "widths": [40], "out": 48, "shortcut": {"pad": _pad_map(24, 48, 5)}})
    u3.update({"in": 48, "widths": [80], "out": 90, "shortcut": {"pad": _pad_map(48, 90, 6)}})
    small = _randomise(build(spec), 5)
    assert _params(small) < 0.6 * _params(big)

    sizes = {}
    for tag, model in (("big", big), ("small", small)):
        info = export(model, tmp_path / f"{tag}.onnx", input_shape=SHAPE)
        assert info["params"] == _params(model)
        # fp32 weights dominate: BN folds into the convs (the file loses 1 of BN's 2 params
        # per channel), the graph itself adds a few KB
        assert 1.0 <= info["bytes"] / (4 * info["params"]) <= 1.05, info
        sizes[tag] = info["bytes"]
    assert sizes["small"] < 0.6 * sizes["big"]


def test_default_input_shape_and_imagenet_stem_via_torchscript(tmp_path) -> None:
    # ResNet-18 layout (7x7 stem, max-pool, 4 stages) at tiny widths, 1 input channel
    spec = spec_of(create("resnet18", num_classes=7, in_channels=1))
    spec["stem_width"] = cin = 4
    for s, units in enumerate(spec["stages"]):
        for u in units:
            u.update({"in": cin, "widths": [3 + s], "out": 4 + 2 * s})
            cin = u["out"]
    model = _randomise(build(spec), 6)
    info = export(model, tmp_path / "r18.pt", format="torchscript")
    assert info["input_shape"] == [1, 224, 224] and info["opset"] is None
    assert info["max_abs_diff"] <= 1e-4
    x = torch.randn(2, 1, 224, 224)
    assert (_run_file(str(tmp_path / "r18.pt"), "torchscript", x) - model(x)).abs().max() <= 1e-4


def test_unsupported_format(tmp_path) -> None:
    with pytest.raises(UserError, match=r"unsupported export format 'tflite'; choose one of: "
                                        r"onnx, torchscript"):
        export(_pruned_a(), tmp_path / "m.tflite", format="tflite", input_shape=SHAPE)
    assert os.listdir(tmp_path) == []


def test_path_is_existing_directory(tmp_path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match=r"is a directory; give a file path"):
        export(_pruned_a(), tmp_path / "out", input_shape=SHAPE)


def test_parent_is_a_file(tmp_path) -> None:
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(UserError, match=r"file is a file, not a directory"):
        export(_pruned_a(), tmp_path / "file" / "sub" / "m.onnx", input_shape=SHAPE)
    assert (tmp_path / "file").read_text() == "keep me"


def test_directory_not_writable(tmp_path, monkeypatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root may write anywhere (CI is root):
        real = os.access                                # the check itself still must refuse

        def access(path, mode, *a, **k):
            return False if Path(path) == locked else real(path, mode, *a, **k)

        monkeypatch.setattr(os, "access", access)
    try:
        with pytest.raises(UserError, match=r"directory .*locked is not writable"):
            export(_pruned_a(), locked / "m.pt", format="torchscript", input_shape=SHAPE)
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux procfs")
def test_write_failure_is_a_user_error() -> None:
    # procfs accepts no new files, even from root: the atomic write's mkstemp fails
    with pytest.raises(UserError, match=r"cannot write export file /proc/resprune-test\.pt"):
        export(_pruned_a(), "/proc/resprune-test.pt", format="torchscript", input_shape=SHAPE)


@pytest.mark.parametrize("kwargs, message", [
    ({"input_shape": (3, 32)}, r"input_shape must be three positive integers"),
    ({"input_shape": (4, 32, 32)}, r"model does not accept inputs of shape \(N, 4, 32, 32\)"),
    ({"input_shape": SHAPE, "opset": 13}, r"opset must be an integer from 18"),
    ({"input_shape": SHAPE, "atol": -1.0}, r"atol must be a finite number >= 0"),
])
def test_bad_arguments(tmp_path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        export(_pruned_a(), tmp_path / "m.onnx", **kwargs)
    assert os.listdir(tmp_path) == []


def test_input_shape_required_for_foreign_modules(tmp_path) -> None:
    with pytest.raises(UserError, match=r"input_shape \(C, H, W\) is required"):
        export(torch.nn.Conv2d(3, 4, 3), tmp_path / "m.pt", format="torchscript")


def test_missing_onnx_packages(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(UserError, match=r"install resprune\[onnx\]"):
        export(_pruned_a(), tmp_path / "m.onnx", input_shape=SHAPE)
    assert os.listdir(tmp_path) == []


def _perturb_runner(monkeypatch) -> None:
    real_runner = export_api._runner

    def perturbed(format: str, data: bytes):
        run = real_runner(format, data)  # the genuine exported model, then off by 1e-3
        return lambda x: run(x) + 1e-3

    monkeypatch.setattr(export_api, "_runner", perturbed)


def _mismatch(fmt: str) -> str:
    return (rf"exported {fmt} model does not match PyTorch: max abs difference 0\.001 > "
            r"atol 0\.0001 at batch size 1; nothing was written")


def test_parity_failure_writes_nothing(tmp_path, monkeypatch) -> None:
    _perturb_runner(monkeypatch)
    model = _pruned_a()
    path = tmp_path / "model.pt"
    with pytest.raises(UserError, match=_mismatch("torchscript")):  # no file appears
        export(model, path, format="torchscript", input_shape=SHAPE)
    assert os.listdir(tmp_path) == []

    path.write_bytes(b"previous export")
    with pytest.raises(UserError, match=_mismatch("torchscript")):  # the old file stays
        export(model, path, format="torchscript", input_shape=SHAPE)
    assert os.listdir(tmp_path) == [path.name]
    assert path.read_bytes() == b"previous export"

    # a tolerance that admits the perturbation lets the new file replace the old one
    info = export(model, path, format="torchscript", input_shape=SHAPE, atol=2e-3)
    assert 1e-3 - 1e-5 < info["max_abs_diff"] < 1e-3 + 1e-4
    assert os.listdir(tmp_path) == [path.name]
    x = torch.ones(2, *SHAPE)
    assert (_run_file(str(path), "torchscript", x) - model(x)).abs().max().item() <= 1e-4


def test_onnx_parity_failure_keeps_previous_file(tmp_path, monkeypatch) -> None:
    _perturb_runner(monkeypatch)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(UserError, match=_mismatch("onnx")):
        export(_pruned_a(), path, format="onnx", input_shape=SHAPE)
    assert os.listdir(tmp_path) == [path.name]
    assert path.read_bytes() == b"previous export"


def test_check_false_skips_parity(tmp_path) -> None:
    info = export(_pruned_b(), tmp_path / "m.pt", format="torchscript", input_shape=SHAPE,
                  check=False)
    assert info["max_abs_diff"] is None and info["batch_sizes"] == []
    assert info["bytes"] == (tmp_path / "m.pt").stat().st_size
