"""Fading structures to zero during training: the callback, implode --erase fade, vacl --fade."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import resprune
from resprune import UserError
from resprune.cli.main import main
from resprune.data import load_dataset, make_loader
from resprune.implosion import ImplosionConfig, add_gates, implode
from resprune.implosion import loop as loop_mod
from resprune.models import create
from resprune.train import Callback, Fade, Slice, TrainConfig, Trainer
from resprune.train.fade import fade_factor

from .conftest import QUIET, randomize_bn


@pytest.fixture(scope="module")
def synth():
    return load_dataset("synthetic", val_fraction=0.25, num_classes=4, image_size=8,
                        train_size=64, test_size=8, augment=True)


def loaders(bundle):
    return (make_loader(bundle, "train", 16, train=True, seed=0),
            make_loader(bundle, "val", 16, train=False))


def test_factors_multiply_to_the_linear_ramp():
    total = 7
    s = 1.0
    for t in range(1, total + 1):
        s *= fade_factor(t, total)
        assert s == pytest.approx(1 - t / total, abs=1e-12)
    assert s == 0.0 and fade_factor(total + 3, total) == 0.0


@pytest.mark.parametrize("end", [0, 1.5, math.nan, True])
def test_bad_end_is_refused(end):
    with pytest.raises(UserError, match=r"fade end must be a fraction of the training in \(0, 1\]"):
        Fade([], end=end)


def test_fade_zeroes_exactly_the_slices_and_holds_them(synth, tmp_path):
    model = randomize_bn(create("resnet8", width=4, num_classes=4))
    train, val = loaders(synth)
    bn = "layer1.0.bn1"
    fade = Fade([Slice(bn, "weight", (0, 2)), Slice(bn, "bias", (0, 2))], end=0.5)
    seen = []

    class Watch(Callback):  # records the faded channel after every step
        def after_step(self, trainer):
            seen.append(float(trainer.model.get_submodule(bn).weight.detach()[0].abs()))

    before = model.get_submodule(bn).weight.detach().clone()
    cfg = TrainConfig(epochs=2, lr=0.05, device="cpu", seed=0)
    Trainer(model, train, val, cfg, run_dir=tmp_path, progress=False,
            callbacks=[fade, Watch()]).fit()
    w = model.get_submodule(bn).weight.detach()
    b = model.get_submodule(bn).bias.detach()
    assert torch.equal(w[[0, 2]], torch.zeros(2)) and torch.equal(b[[0, 2]], torch.zeros(2))
    assert bool((w[[1, 3]] != before[[1, 3]]).all())  # the rest trained freely
    steps = len(seen)
    half = fade.total
    assert half == round(0.5 * steps)
    assert all(v == 0.0 for v in seen[half - 1:])  # zero from step T on, held there
    assert all(v > 0.0 for v in seen[:half - 1])


def test_fade_names_a_missing_parameter(synth, tmp_path):
    model = create("resnet8", width=4, num_classes=4)
    train, val = loaders(synth)
    with pytest.raises(UserError, match="cannot fade layer1.0.bn1.gate: no such parameter"):
        Trainer(model, train, val, TrainConfig(epochs=1, device="cpu"), run_dir=tmp_path,
                progress=False, callbacks=[Fade([Slice("layer1.0.bn1", "gate")])]).fit()


def test_implode_fade_erases_units_without_changing_the_logits(synth, tmp_path, monkeypatch):
    """The retrained net (gates at exactly 0) and the net after erasure give the same logits."""
    model = randomize_bn(create("resnet14", width=4, num_classes=4)).eval()
    add_gates(model)
    retrained = {}
    real = loop_mod._Run.train

    def spy(self, epochs, lr, seed, directory, callbacks=None):
        out = real(self, epochs, lr, seed, directory, callbacks)
        if callbacks:
            retrained["model"] = copy.deepcopy(self.model).eval()
            retrained["gates"] = {n: float(self.model.get_submodule(n).gate.detach())
                                  for n in ("layer1.0", "layer1.1", "layer2.1", "layer3.1")
                                  if getattr(self.model.get_submodule(n), "gate", None)
                                  is not None}
        return out

    monkeypatch.setattr(loop_mod._Run, "train", spy)
    cfg = ImplosionConfig(per_step=2, retrain_epochs=1, tolerance=100.0, max_steps=1,
                          adapt_epochs=0, erase="fade", fade_end=0.5, fold=False,
                          train=TrainConfig(device="cpu", lr=0.01))
    res = implode(model, *loaders(synth), cfg, tmp_path / "imp", progress=False)
    assert len(res.erased) == 2 and res.history[0]["accepted"]
    assert all(retrained["gates"][n] == 0.0 for n in res.erased)
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        a, b = retrained["model"](x), res.model.eval()(x)
    assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_implode_fade_needs_retraining():
    with pytest.raises(UserError, match="erase fade fades the units during the retraining"):
        ImplosionConfig(erase="fade", retrain_epochs=0).validate()
    with pytest.raises(UserError, match="unknown erase mode 'snip'"):
        ImplosionConfig(erase="snip").validate()




def test_vacl_fade_prunes_groups_that_are_already_zero(trained, tmp_path):
    out = tmp_path / "vacl"
    assert main(["vacl", str(trained), *QUIET, "--sparse-epochs", "1", "--finetune-epochs",
                 "1", "--lam", "0", "--fade", "linear", "--fade-end", "0.5",
                 "--target-params-reduction", "0.4", "--out", str(out)]) == 0
    state = json.loads((out / "state.json").read_text())
    report = json.loads((out / "stages" / "pruned" / "prune_report.json").read_text())
    assert set(report["removed_groups"]) <= set(state["dry_run_groups"])
    assert report["params_reduction"] >= 0.4
    sparse = resprune.load(out / "stages" / "sparse").eval()
    pruned = resprune.load(out / "stages" / "pruned").eval()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        a, b = sparse(x), pruned(x)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    s = json.loads((out / "summary.json").read_text())
    assert s["val_top1_before_finetune"] == s["val_top1_after_sparse"]


def test_vacl_fade_needs_a_target(trained, tmp_path, capsys):
    code = main(["vacl", str(trained), *QUIET, "--fade", "linear", "--threshold", "0.1",
                 "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "resprune: error: --fade needs --target-params-reduction or "
        "--target-macs-reduction: the groups to fade come from a dry run of the target")
    assert not (tmp_path / "v").exists()
