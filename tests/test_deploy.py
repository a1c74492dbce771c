"""The deployment form: gates and BatchNorms folded, same logits, fewer modules."""

from __future__ import annotations

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
