"""``vacl --auto-tolerance``: the pruning target chosen on the validation split only."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import resprune
from resprune.cli.main import main
from resprune.data import load_dataset, make_loader
from resprune.errors import UserError
from resprune.measure import count_params
from resprune.models import create
from resprune.vacl import discover_groups, prune
from resprune.vacl import select as select_mod
from resprune.vacl.select import DEFAULT_CANDIDATES, choose_reduction
from tests.conftest import QUIET, randomize_bn

CIFAR = (3, 32, 32)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = randomize_bn(create("resnet8", width=4)).eval()
    return model, discover_groups(model, CIFAR)


@pytest.fixture(scope="module")
def loaders():
    bundle = load_dataset("synthetic", val_fraction=0.1, seed=0)
    return (make_loader(bundle, "val", 256, train=False, seed=0),
            make_loader(bundle, "test", 256, train=False, seed=0))


def curve(base_params: int, seen: list):
    """A fake evaluate: accuracy as a function of the params removed, with a dip and a spike."""

    def fake(model, loader, precision="fp32"):
        seen.append(loader)
        r = 1 - count_params(model) / base_params
        top1 = 0.90 if r < 0.30 else 0.50 if r < 0.45 else 0.95
        return {"top1": top1, "top5": 1.0, "loss": 0.0, "n": 1}

    return fake


def test_choice_reads_only_the_loader_given_and_stops_at_the_first_dip(net, loaders,
                                                                       monkeypatch):
    model, groups = net
    val, test = loaders
    before = copy.deepcopy(model.state_dict())
    seen: list = []
    monkeypatch.setattr(select_mod, "evaluate", curve(count_params(model), seen))
    auto = choose_reduction(model, CIFAR, val, 1.0, groups=groups)
    assert seen and all(loader is val for loader in seen)  # the test loader is never read
    assert not any(loader is test for loader in seen)
    # every candidate before the dip held; the first one in it failed and ended the scan
    tried = auto["candidates"]
    assert [c["holds"] for c in tried] == [True] * (len(tried) - 1) + [False]
    assert tried[-1]["reduction"] >= 0.30 > tried[-2]["reduction"]
    assert auto["stop"] == "accuracy" and auto["chosen"] == tried[-2]["target"]
    assert auto["chosen"] in DEFAULT_CANDIDATES and 0 <= auto["chosen_reduction"] < 0.30
    assert auto["reference_val_top1"] == 0.90 and auto["bar"] == pytest.approx(0.89)
    # targets are tried in order, and pruning copies left the model untouched
    assert [c["target"] for c in tried] == list(DEFAULT_CANDIDATES[:len(tried)])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_choice_is_monotone_in_the_tolerance(net, loaders, monkeypatch):
    model, groups = net
    val, _ = loaders
    monkeypatch.setattr(select_mod, "evaluate", curve(count_params(model), []))
    chosen = [choose_reduction(model, CIFAR, val, t, groups=groups)["chosen"]
              for t in (0.0, 1.0, 39.0, 40.0, 60.0)]
    assert chosen == sorted(chosen)
    assert chosen[0] == chosen[1] == chosen[2] < chosen[3]  # 40 points let the dip pass
    # past the dip the spike holds too: the scan goes on until nothing more can be removed
    wide = choose_reduction(model, CIFAR, val, 60.0, groups=groups)
    assert wide["stop"] in ("exhausted", "all_held") and all(
        c["holds"] for c in wide["candidates"])


def test_chosen_reduction_holds_on_real_validation_accuracy(net, loaders):
    model, groups = net
    val, _ = loaders
    auto = choose_reduction(model, CIFAR, val, 5.0, groups=groups, candidates=(0.1, 0.2, 0.4))
    assert 0 <= auto["chosen"] < 1 and auto["chosen"] in (0.0, 0.1, 0.2, 0.4)
    ref = resprune.measure.evaluate(model, val)["top1"]
    assert auto["reference_val_top1"] == ref
    for c in auto["candidates"]:  # each record is the pruned copy's real val top-1
        pruned = copy.deepcopy(model)
        report = prune(pruned, CIFAR, target_params_reduction=c["target"], groups=groups)
        assert report["params_reduction"] == c["reduction"]
        assert resprune.measure.evaluate(pruned, val)["top1"] == c["val_top1"]
        assert c["holds"] == (c["val_top1"] >= ref - 0.05 - 1e-12)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(tolerance=-1.0), "auto tolerance must be a number >= 0"),
    (dict(tolerance=1.0, candidates=(0.5, 1.0)), "fractions in (0, 1)"),
    (dict(tolerance=1.0, metric="depth"), "unknown reduction metric"),
])
def test_bad_arguments(net, loaders, kwargs, msg):
    model, groups = net
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        choose_reduction(model, CIFAR, loaders[0], groups=groups, **kwargs)


# -- the command ------------------------------------------------------------------------------

def test_vacl_auto_tolerance_decides_on_val_and_records_it(trained, tmp_path, monkeypatch,
                                                           capsys):
    sizes: list[int] = []
    real = select_mod.evaluate

    def spy(model, loader, precision="fp32"):
        sizes.append(loader.num_samples)
        return real(model, loader, precision=precision)

    monkeypatch.setattr(select_mod, "evaluate", spy)
    out = tmp_path / "auto"
    assert main(["vacl", str(trained), *QUIET, "--sparse-epochs", "1", "--finetune-epochs",
                 "0", "--auto-tolerance", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    bundle = load_dataset("synthetic", val_fraction=0.1, seed=0)
    assert sizes and set(sizes) == {len(bundle.val)} != {len(bundle.test)}
    pr, auto = summary["prune"], summary["prune"]["auto"]
    assert pr["mode"] == "params" and pr["target_reduction"] == auto["chosen"]
    # one evaluation per distinct candidate; the reference is the input's, measured before
    assert auto["tolerance"] == 3.0 and len(sizes) == len(
        {c["reduction"] for c in auto["candidates"]})
    # held to the input net's accuracy, not the sparse model's
    assert auto["reference_val_top1"] == summary["base"]["val_top1"]
    assert auto["chosen"] > 0  # this setup prunes: the pruned model is the chosen copy
    chosen = next(c for c in auto["candidates"] if c["target"] == auto["chosen"])
    assert summary["val_top1_before_finetune"] == chosen["val_top1"]
    assert pr["params_reduction"] == chosen["reduction"]
    assert summary["val_top1_before_finetune"] >= auto["bar"] - 1e-12
    assert summary["config"]["auto_tolerance"] == 3.0


@pytest.mark.parametrize("extra, msg", [
    (["--auto-tolerance", "1", "--threshold", "0.1"],
     "give exactly one of --threshold, --target-params-reduction, --target-macs-reduction, "
     "--target-latency-reduction, --target-latency and --auto-tolerance, or both "
     "--target-params-reduction and --target-macs-reduction (got --threshold, "
     "--auto-tolerance)"),
    (["--auto-tolerance", "-1"], "argument --auto-tolerance: must be a number >= 0, got -1"),
    (["--auto-tolerance", "1", "--val-fraction", "0"],
     "--auto-tolerance chooses on the validation split, which is empty"),
])
def test_bad_auto_options_one_line_exit_2(trained, tmp_path, capsys, extra, msg):
    out = tmp_path / "bad"
    assert main(["vacl", str(trained), *QUIET, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err
    assert not out.exists()
