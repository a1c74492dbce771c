"""The deployment form: gates and BatchNorms folded, same logits, fewer modules."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import resprune
from resprune import UserError
from resprune.cli.main import main
from resprune.implosion import add_gates, erase_units
from resprune.models import create

from .conftest import randomize_bn

SHAPE = (3, 32, 32)


def _gated(shortcut: str) -> nn.Module:
    model = randomize_bn(create("resnet20", shortcut=shortcut, width=8)).eval()
    add_gates(model)
    with torch.no_grad():
        for i, m in enumerate(model.modules()):
            if getattr(m, "gate", None) is not None:
                m.gate.fill_(0.5 + 0.1 * (i % 5))
    erase_units(model, ["layer2.1"])
    return model


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_deploy_folds_every_bn_and_gate_with_the_same_logits(shortcut):
    model = _gated(shortcut)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = resprune.deploy(model)
    assert n_bn > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(getattr(m, "gate", None) is None for m in folded.modules())
    assert any(getattr(m, "gate", None) is not None for m in model.modules())  # untouched
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5, rtol=1e-4)
    # the folded convs carry the BN shift as a bias
    assert all(m.bias is not None for m in folded.modules() if isinstance(m, nn.Conv2d))


def test_deploy_of_a_user_model_and_a_bn_that_cannot_fold():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.side = nn.Conv2d(8, 8, 1)
            self.bn2 = nn.BatchNorm2d(8)  # fed by an addition: stays
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            y = self.bn2(y + self.side(y))
            return self.fc(y.mean((2, 3)))

    net = randomize_bn(Net()).eval()
    folded = resprune.deploy(net, (3, 16, 16))
    kinds = {n: type(m).__name__ for n, m in folded.named_modules() if n}
    assert kinds["bn"] == "Identity" and kinds["bn2"] == "BatchNorm2d"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), folded(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(UserError, match="cannot guess the input shape"):
        resprune.deploy(net)


def test_export_fold_writes_a_checked_bn_free_graph(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    resprune.save(_gated("A"), run)
    ops = {}
    for fold in (False, True):
        out = tmp_path / f"m{fold}.onnx"
        assert main(["export", str(run), *(["--fold"] if fold else []), "--out", str(out),
                     "--json"]) == 0
        ops[fold] = [n.op_type for n in onnx.load(str(out)).graph.node]
    capsys.readouterr()
    # torch's exporter folds BNs itself; the gates' multiplies go only with --fold
    assert "BatchNormalization" not in ops[False] and "Mul" in ops[False]
    assert "BatchNormalization" not in ops[True] and "Mul" not in ops[True]
    assert ops[True].count("Conv") == ops[False].count("Conv")


def _nonzero(model: nn.Module) -> tuple[int, float]:
    """Nonzero conv/linear weights and their absolute sum."""
    ws = [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(int((w != 0).sum()) for w in ws), sum(float(w.abs().sum()) for w in ws)


def _odd(model: nn.Module, reduction: float = 0.3) -> nn.Module:
    """``model`` with randomised BNs, pruned by vacl to widths that are not multiples of 8."""
    from resprune import vacl

    model = randomize_bn(model).eval()
    vacl.prune(model, SHAPE, target_params_reduction=reduction, score="layer_rms")
    return model.eval()


def test_pad_channels_rounds_every_width_and_keeps_the_logits():
    from resprune.export import pad_channels
    from resprune.measure.compare import round_channels

    model = _odd(_gated("A"))
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert any(w % 8 for w in widths)
    padded = pad_channels(model, 8)
    assert padded.spec() == round_channels(model.spec(), 8)
    convs = [m for m in padded.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert all(c.in_channels % 8 == 0 for c in convs[1:]) and convs[0].in_channels == 3
    assert padded.fc.out_features == model.fc.out_features
    # only zeros are added: the same nonzero weights, the same logits
    assert _nonzero(padded)[0] == _nonzero(model)[0]
    assert _nonzero(padded)[1] == pytest.approx(_nonzero(model)[1], rel=1e-6)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), padded(x), atol=1e-5, rtol=1e-4)
        deployed = resprune.deploy(model, pad_to=8)
        assert torch.allclose(model(x), deployed(x), atol=1e-5, rtol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())


def test_pad_channels_keeps_each_channel_in_its_group():
    from resprune.export import pad_channels
    from resprune.export.pad import _grouped_map

    # 12 channels in 4 groups of 3 -> 16 in 4 groups of 4: group k starts at 4k
    assert _grouped_map(12, 16, 4).tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14]
    model = _odd(create("resnext29", cardinality=4, base_width=2, width=4))
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert any(m.out_channels % 8 for m in grouped)
    padded = pad_channels(model, 8)
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), padded(x), atol=1e-5, rtol=1e-4)
    assert _nonzero(padded)[0] == _nonzero(model)[0]


def test_pad_channels_refuses_what_it_cannot_pad():
    from resprune.export import pad_channels

    with pytest.raises(UserError, match="channel padding needs a resprune ResNet"):
        pad_channels(nn.Sequential(nn.Conv2d(3, 5, 3)), 8)
    with pytest.raises(UserError, match="multiple must be an integer >= 1"):
        pad_channels(create("resnet8", width=4), 0)


def test_export_pad_channels_writes_block_widths_with_parity(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    run = tmp_path / "run"
    resprune.save(_odd(_gated("A")), run)
    out = tmp_path / "padded.onnx"
    assert main(["export", str(run), "--fold", "--pad-channels", "8", "--out", str(out),
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["max_abs_diff"] <= 1e-4 and info["batch_sizes"] == [1, 3]
    assert info["pad_to"] == 8 and info["fold"] is True
    graph = onnx.load(str(out)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    conv_w = [weights[n.input[1]] for n in graph.node if n.op_type == "Conv"]
    assert conv_w and all(w.shape[0] % 8 == 0 for w in conv_w)
    assert main(["export", str(run), "--pad-channels", "0", "--out", str(out)]) == 2
    assert "--pad-channels" in capsys.readouterr().err


@pytest.mark.parametrize("padded_faster", [True, False])
def test_export_pad_channels_auto_keeps_the_faster_form(tmp_path, capsys, monkeypatch,
                                                        padded_faster):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    from resprune.export import pad
    from resprune.measure import compare

    timed = []

    def medians(fns, warmup, repeats, sync=None):
        timed.append((sorted(fns), warmup, repeats))
        for f in fns.values():  # each form runs: it was exported and opened
            assert f() is not None
        return {"exact": 10.0, "padded": 8.0 if padded_faster else 12.0}
    monkeypatch.setattr(compare, "interleaved_medians", medians)
    monkeypatch.setattr(pad, "cpu_block", lambda: 8)
    run = tmp_path / "run"
    resprune.save(_odd(_gated("A")), run)
    out = tmp_path / "auto.onnx"
    assert main(["export", str(run), "--pad-channels", "auto", "--pad-batch", "3", "--out",
                 str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert timed == [(["exact", "padded"], 1, 7)]
    assert info["pad_to"] == (8 if padded_faster else None)
    assert info["padding"]["batch"] == 3 and info["padding"]["runtime"] == "onnxruntime"
    assert (info["padding"]["exact_ms"], info["padding"]["padded_ms"]) == (
        10.0, 8.0 if padded_faster else 12.0)
    graph = onnx.load(str(out)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    outs = [weights[n.input[1]].shape[0] for n in graph.node if n.op_type == "Conv"]
    assert all(c % 8 == 0 for c in outs) == padded_faster
    # widths that already are multiples: nothing to time, exported as they are
    timed.clear()
    resprune.save(_gated("A"), tmp_path / "even")
    assert main(["export", str(tmp_path / "even"), "--pad-channels", "auto", "--out",
                 str(tmp_path / "even.onnx")]) == 0
    assert timed == [] and "already is a multiple of 8" in capsys.readouterr().out
    assert main(["export", str(run), "--pad-channels", "some", "--out", str(out)]) == 2
    assert "--pad-channels" in capsys.readouterr().err


def test_choose_padding_times_both_forms_and_picks_the_faster():
    from resprune.export.pad import choose_padding

    model = _odd(_gated("A"))
    chosen, info = choose_padding(model, SHAPE, runtime="eager", batch=2, multiple=8, repeats=3)
    assert info["exact_ms"] > 0 and info["padded_ms"] > 0 and info["multiple"] == 8
    assert chosen == (8 if info["padded_ms"] < info["exact_ms"] else None)
    assert "batch 2" in info["reason"]
    none, why = choose_padding(model, SHAPE, runtime="eager", multiple=1)
    assert none is None and why["exact_ms"] is None and "already is a multiple of 1" in (
        why["reason"])
