"""Least-squares reconstruction after pruning (``vacl.reconstruct``, ``--reconstruct N``)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import resprune
from resprune import UserError, vacl
from resprune.cli.main import main
from resprune.compression import CompressConfig
from resprune.models import create, spec_of

from .conftest import QUIET, randomize_bn

CIFAR = (3, 32, 32)


def batches(n: int, size: int = 8, shape=CIFAR, seed: int = 0, dtype=torch.float64):
    """``n`` batches of Gaussian images (a loader is any iterable of (x, y))."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=g, dtype=dtype),
             torch.zeros(size, dtype=torch.long)) for _ in range(n)]


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ["resnet20", "resnext"])
def test_a_perturbed_layer_is_recovered_exactly(arch):
    """Same structure, one conv's weights disturbed: with ridge 0 the least-squares fit finds
    weights giving the unpruned layer's outputs again (more rows than unknowns), so the logits
    are the original's;
    every other layer is left bit for bit as it was (its output already matched)."""
    torch.manual_seed(0)
    model = (create("resnet20", width=8) if arch == "resnet20"
             else create("resnext29", cardinality=2, base_width=4, width=8))
    model = randomize_bn(model).double()
    name = "layer2.1.conv1" if arch == "resnet20" else "layer2.1.conv2"  # resnext: grouped
    copy_ = copy.deepcopy(model)
    layer = dict(copy_.named_modules())[name]
    if arch == "resnext":
        assert layer.groups == 2
    layer.weight.data += 0.3 * torch.randn_like(layer.weight)
    x = batches(1, 4, seed=9)[0][0]
    assert not torch.allclose(logits(copy_, x), logits(model, x), atol=1e-3)
    kept = state(copy_)
    got = vacl.reconstruct(model, copy_, batches(4), 32, ridge=0.0)
    assert got["samples"] == 32 and got["ridge"] == 0.0
    refit = [r["layer"] for r in got["layers"] if r["error_before"] > 0]
    assert refit[0] == name  # the first layer whose output differs; the ones before skipped
    assert got["layers"][[r["layer"] for r in got["layers"]].index(name)]["error_after"] < 1e-12
    # (the weights themselves match except on input channels the ReLU before never opens,
    # which the least-norm fit sets to zero)
    assert torch.allclose(logits(copy_, x), logits(model, x), rtol=0, atol=1e-7)
    before = [r["layer"] for r in got["layers"]][:[r["layer"] for r in got["layers"]].index(name)]
    for key, value in kept.items():
        if any(key.startswith(b + ".") for b in before):
            assert torch.equal(copy_.state_dict()[key], value), key


class Shift(nn.Module):
    """Adds a learnt per-channel constant: a layer reconstruction cannot re-fit."""

    def __init__(self, c: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(c, dtype=torch.float64))

    def forward(self, x):
        return x + self.shift.view(1, -1, 1, 1)


def shifted_net() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), Shift(6), nn.Conv2d(6, 5, 3, bias=False),
                        nn.BatchNorm2d(5), nn.Flatten(), nn.Linear(5 * 28 * 28, 4))
    return randomize_bn(net).double()


def test_the_fitted_offset_goes_into_the_batchnorm_a_biasless_conv_feeds():
    """A shifted input is compensated by the fit's constant term; the conv has no bias, so it
    moves the running mean of the BatchNorm it feeds, and the model gives the original's
    logits in eval mode without an extra op or a new parameter."""
    original = shifted_net()
    pruned = copy.deepcopy(original)
    pruned[1].shift.data = torch.linspace(-1, 1, 6, dtype=torch.float64)
    x = batches(1, 4, shape=(3, 32, 32), seed=5)[0][0]
    names_before = [n for n, _ in pruned.named_parameters()]
    got = vacl.reconstruct(original, pruned, batches(4), 32, ridge=0.0)
    assert [r["layer"] for r in got["layers"]] == ["0", "2", "5"]
    assert got["layers"][0] == {"layer": "0", "error_before": 0.0, "error_after": 0.0}
    assert pruned[2].bias is None and [n for n, _ in pruned.named_parameters()] == names_before
    moved = pruned[3].running_mean - original[3].running_mean
    # the constant the shift adds to conv "2"'s output (sum over inputs and taps of W *
    # shift): the BatchNorm now subtracts it too
    expected = original[2].weight.sum((2, 3)) @ pruned[1].shift.data
    assert torch.allclose(moved, expected, atol=1e-8)
    assert torch.allclose(logits(pruned, x), logits(original, x), rtol=0, atol=1e-8)


def test_after_real_pruning_every_fit_lowers_its_error_and_the_logits_move_closer():
    torch.manual_seed(0)
    original = create("resnet20", shortcut="A", width=8)
    randomize_bn(original)
    pruned = copy.deepcopy(original)
    report = vacl.prune(pruned, CIFAR, target_params_reduction=0.4)
    spec, ref = spec_of(pruned), state(original)
    data = batches(8, dtype=torch.float32)
    x = batches(1, 16, seed=3, dtype=torch.float32)[0][0]
    gap = (logits(pruned, x) - logits(original, x)).pow(2).mean()
    original.train()
    pruned.train()
    got = vacl.reconstruct(original, pruned, data, 64, report["kept_out_channels"])
    assert original.training and pruned.training  # modes given back
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in ref.items())  # untouched
    assert spec_of(pruned) == spec  # widths as pruned: only values change
    fitted = [r for r in got["layers"] if r["error_before"] > 0]
    assert len(fitted) > 10
    assert all(r["error_after"] <= r["error_before"] + 1e-9 for r in fitted)
    assert (logits(pruned, x) - logits(original, x)).pow(2).mean() < 0.5 * gap
    assert json.loads(json.dumps(got)) == got


def test_bad_reconstruction_inputs_are_user_errors():
    original = create("resnet8", width=4)
    pruned = copy.deepcopy(original)
    report = vacl.prune(pruned, CIFAR, target_params_reduction=0.3)
    kept = dict(report["kept_out_channels"])
    name = next(n for n, k in kept.items() if len(k) < report["widths_before"][n])
    with pytest.raises(UserError, match=f"layer {name}: .* output channels but kept_out lists"):
        vacl.reconstruct(original, pruned, batches(1, dtype=torch.float32), 8,
                         {**kept, name: kept[name] + [999]})
    with pytest.raises(UserError, match="at least 1 image"):
        vacl.reconstruct(original, pruned, batches(1), 0, kept)
    with pytest.raises(UserError, match="the training loader is empty"):
        vacl.reconstruct(original, pruned, [], 8, kept)


def run(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_vacl_reconstruct_refits_the_pruned_stage_and_reports_it(trained, tmp_path, capsys):
    """``--reconstruct N``: the same removal as without it, then re-fitted; the summary, the
    report and the stage's val top-1 say what it did; compress passes it to its vacl stage."""
    common = ["vacl", trained, *QUIET, "--sparse-epochs", "0", "--finetune-epochs", "0",
              "--target-params-reduction", "0.5"]
    plain, refit = tmp_path / "plain", tmp_path / "refit"
    assert run([*common, "--out", plain], capsys)[0] == 0
    code = main([str(a) for a in [*common, "--reconstruct", "40", "--out", refit]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert ", pruned and re-fitted " in out
    a, b = (resprune.load(p / "stages" / "pruned") for p in (plain, refit))
    assert spec_of(a) == spec_of(b)
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    s_plain = json.loads((plain / "summary.json").read_text())
    s = json.loads((refit / "summary.json").read_text())
    rec = s["prune"]["reconstruction"]
    assert s_plain["prune"]["reconstruction"] is None
    assert rec["samples"] == 40 and rec["layers_fitted"] > 0
    assert rec["error_after"] < rec["error_before"]
    assert rec["val_top1_before"] == s_plain["val_top1_before_finetune"]
    report = json.loads((refit / "stages" / "pruned" / "prune_report.json").read_text())
    assert len(report["reconstruction_layers"]) >= rec["layers_fitted"]
    text = (refit / "report.md").read_text()
    assert ("re-fitted by least squares to the input's outputs on 40 training images"
            in text)
    assert "Reconstruction" not in (plain / "report.md").read_text()
    cfg = CompressConfig(reconstruct=40, target_params_reduction=0.5)
    assert cfg.vacl_config(cfg.vacl_rule_example()).reconstruct == 40
    code, err = run([*common, "--reconstruct", "-1", "--out", tmp_path / "bad"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--reconstruct" in err, err
    assert not (tmp_path / "bad").exists()


def test_implode_reconstruct_refits_each_cut_and_reports_it(trained, tmp_path, capsys):
    """``implode --reconstruct N``: every step's cut is re-fitted and measured right after the
    cut; the summary's steps and the report say so; with --erase fade it is one line, exit
    2, nothing written."""
    out = tmp_path / "imp"
    args = ["implode", trained, *QUIET, "--per-step", "1", "--max-steps", "1",
            "--retrain-epochs", "1", "--adapt-epochs", "0", "--tolerance", "100",
            "--reconstruct", "32"]
    code, err = run([*args, "--out", out], capsys)
    assert code == 0, err
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert len(steps) == 1  # resnet8: one erasable unit
    for s in steps:
        assert "cut_val_top1" in s
        assert s["reconstruction"]["samples"] == 32 and s["reconstruction"]["layers_fitted"] > 0
    text = (out / "report.md").read_text()
    assert "re-fitted by least squares to the net before the cut, on 32 training images" in text
    assert "val top-1 right after the cut" in text
    code, err = run([*args, "--erase", "fade", "--out", tmp_path / "bad"], capsys)
    assert code == 2 and err.count("\n") == 1 and "erase fade" in err, err
    assert not (tmp_path / "bad").exists()


def test_chunked_regression_inputs_give_the_same_fit(monkeypatch):
    """The normal equations are summed over chunks of a few images (bounded memory on large
    inputs): a tiny chunk gives the fit of one chunk a batch, up to rounding."""
    from resprune.train import reconstruction

    torch.manual_seed(0)
    original = create("resnet20", width=8)
    pruned = copy.deepcopy(original)
    kept = vacl.prune(pruned, CIFAR, target_params_reduction=0.4)["kept_out_channels"]
    data = batches(4, dtype=torch.float32)
    whole = copy.deepcopy(pruned)
    vacl.reconstruct(original, whole, data, 32, kept)
    monkeypatch.setattr(reconstruction, "_CHUNK", 1000)  # one image or less per chunk
    chunked = copy.deepcopy(pruned)
    vacl.reconstruct(original, chunked, data, 32, kept)
    a, b = whole.state_dict(), chunked.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-5) for k in a)
    assert any(not torch.equal(a[k], pruned.state_dict()[k]) for k in a)


def test_each_pruning_step_is_refitted_and_recorded(trained, tmp_path, capsys):
    out = tmp_path / "steps"
    code, err = run(["vacl", trained, *QUIET, "--sparse-epochs", "0", "--prune-steps", "2",
                     "--step-epochs", "1", "--finetune-epochs", "0",
                     "--target-params-reduction", "0.5", "--reconstruct", "40", "--out", out],
                    capsys)
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    recs = [step["reconstruction"] for step in s["prune_steps"]]
    assert len(recs) == 2 and all(r["samples"] == 40 and r["layers_fitted"] > 0 for r in recs)
    assert s["prune"]["reconstruction"] == recs[1]  # the last step's
    assert "Reconstruction after each of the 2 steps; after the last, the" in (
        out / "report.md").read_text()
