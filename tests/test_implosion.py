"""Network Implosion: gates, scores, erasure, folding and the resumable implode loop."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import resprune
from resprune import UserError
from resprune.data import load_dataset, make_loader
from resprune.implosion import (
    ImplosionConfig,
    add_gates,
    erasable_units,
    erase_units,
    fold_gates,
    gates,
    implode,
    score_units,
)
from resprune.implosion import loop as loop_mod
from resprune.measure import count_macs, count_params, depth
from resprune.models import ResidualUnit, build, create, model_spec, spec_of
from resprune.train import Callback, TrainConfig, Trainer

from .conftest import randomize_bn

# -- helpers --------------------------------------------------------------------------------




IMAGENET = ("resnet18", "resnet50")


def tiny_opts(name: str, opts: dict) -> dict:
    if name.startswith("resnext"):
        return {"cardinality": 2, "base_width": 2, "width": 4, **opts}
    if name in IMAGENET:
        return dict(opts)
    return {"width": 4, **opts}


def tiny(name: str = "resnet14", **opts) -> nn.Module:
    """A small zoo model; the ImageNet ones keep their topology with every width / 16."""
    if name in IMAGENET:
        spec = model_spec(name, num_classes=10, **opts)
        spec["stem_width"] //= 16
        for stage in spec["stages"]:
            for u in stage:
                u["in"], u["out"] = u["in"] // 16, u["out"] // 16
                u["widths"] = [w // 16 for w in u["widths"]]
        return randomize_bn(build(spec)).eval()
    return randomize_bn(create(name, **tiny_opts(name, opts))).eval()


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def set_gates(model: nn.Module, values: dict[str, float]) -> None:
    with torch.no_grad():
        for name, v in values.items():
            model.get_submodule(name).gate.fill_(v)


def gated_spec_units(model: nn.Module) -> list[str]:
    return [f"layer{s + 1}.{i}" for s, st in enumerate(spec_of(model)["stages"])
            for i, u in enumerate(st) if u.get("gate")]


# -- gates ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,opts,size", [
    ("resnet8", {}, 8), ("resnet14", {"shortcut": "A"}, 8), ("resnet14", {"shortcut": "B"}, 8),
    ("resnext29", {}, 8), ("resnet18", {}, 32), ("resnet50", {}, 32),
])
def test_gates_at_one_are_exact(name, opts, size):
    model = tiny(name, **opts)
    x = torch.randn(3, 3, size, size)
    before = logits(model, x)
    added = add_gates(model)
    assert added == erasable_units(model) and added
    assert torch.equal(logits(model, x), before)
    assert gates(model) == {n: 1.0 for n in added}
    assert gated_spec_units(model) == added
    assert add_gates(model) == []  # idempotent
    # the zoo's gates=True option gates exactly the same units
    assert gated_spec_units(tiny(name, gates=True, **opts)) == added


def test_erasable_units_never_change_shape():
    for shortcut in ("A", "B"):
        model = tiny("resnet14", shortcut=shortcut)
        assert erasable_units(model) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]
    assert erasable_units(tiny("resnet50")) == [
        "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer2.3", "layer3.1", "layer3.2",
        "layer3.3", "layer3.4", "layer3.5", "layer4.1", "layer4.2"]
    model = tiny("resnet14")
    add_gates(model)
    assert model.layer2[0].gate is None and model.layer3[0].gate is None


@pytest.mark.parametrize("name,size", [("resnet14", 8), ("resnext29", 8), ("resnet50", 32)])
def test_fold_gates_matches_within_1e5(name, size):
    model = tiny(name)
    add_gates(model)
    g = torch.Generator().manual_seed(1)
    vals = {n: float(torch.randn((), generator=g)) for n in gates(model)}
    vals[next(iter(vals))] = 0.0
    set_gates(model, vals)
    x = torch.randn(4, 3, size, size)
    ref_eval = logits(model, x)
    # batch statistics (a copy: a training-mode forward updates the running stats)
    ref_train = logits(copy.deepcopy(model).train(), x)
    n_params = count_params(model)
    folded = fold_gates(model)
    assert folded == pytest.approx(vals)
    assert gates(model) == {} and not gated_spec_units(model)
    assert not any(n.endswith("gate") for n, _ in model.named_parameters())
    assert count_params(model) == n_params - len(vals)
    torch.testing.assert_close(logits(model, x), ref_eval, atol=1e-5, rtol=0)
    # exact in exact arithmetic; batch statistics amplify float rounding in deep nets
    torch.testing.assert_close(logits(copy.deepcopy(model).train(), x), ref_train, atol=1e-4,
                               rtol=1e-4)


def test_folded_model_round_trips(tmp_path):
    model = tiny("resnet14")
    add_gates(model)
    set_gates(model, {"layer1.1": 0.25, "layer3.1": -1.5})
    fold_gates(model)
    resprune.save(model, tmp_path)
    loaded = resprune.load(tmp_path).eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(logits(loaded, x), logits(model, x))


# -- erasure --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,unit,size", [
    ("resnet14", "layer2.1", 8), ("resnet14", "layer1.0", 8), ("resnext29", "layer3.2", 8),
    ("resnet18", "layer1.0", 32), ("resnet50", "layer4.2", 32),
])
def test_erasing_a_gate_zero_unit_leaves_logits_unchanged(name, unit, size):
    model = tiny(name)
    add_gates(model)
    set_gates(model, {unit: 0.0})
    x = torch.randn(3, 3, size, size)
    before = logits(model, x)
    assert erase_units(model, [unit]) == [unit]
    assert isinstance(model.get_submodule(unit), nn.Identity)
    assert unit not in erasable_units(model)
    assert torch.equal(logits(model, x), before)


def test_resnet56_stage3_erasure_arithmetic(tmp_path):
    model = create("resnet56").eval()
    p0, m0, d0 = count_params(model), count_macs(model, (3, 32, 32)), depth(model)
    assert (p0, d0) == (853_018, 56)
    erase_units(model, "layer3.4")
    assert p0 - count_params(model) == 2 * (64 * 64 * 9) + 2 * 2 * 64 == 73_984
    assert m0 - count_macs(model, (3, 32, 32)) == 2 * 64 * 64 * 9 * 8 * 8 == 4_718_592
    assert d0 - depth(model) == 2
    assert spec_of(model)["stages"][2][4] == {"erased": True, "in": 64, "out": 64}
    resprune.save(model, tmp_path)
    loaded = resprune.load(tmp_path).eval()
    assert isinstance(loaded.layer3[4], nn.Identity)
    assert count_params(loaded) == p0 - 73_984
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(logits(loaded, x), logits(model, x))


def test_erase_refuses_non_erasable_units():
    model = tiny("resnet14")
    for name, why in [("layer2.0", "shortcut is not the identity"), ("fc", "not a residual"),
                      ("conv1", "not a residual"), ("layer9.0", "no such unit")]:
        with pytest.raises(UserError, match=rf"cannot erase '{name}': .*{why}.*layer1\.0"):
            erase_units(model, [name, "layer1.0"])
    assert erasable_units(model) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]  # untouched
    erase_units(model, ["layer1.0"])
    with pytest.raises(UserError, match="'layer1.0': it is already erased"):
        erase_units(model, ["layer1.0"])
    with pytest.raises(UserError, match="listed twice"):
        erase_units(model, ["layer1.1", "layer1.1"])
    erase_units(model, ["layer1.1", "layer2.1", "layer3.1"])
    with pytest.raises(UserError, match="no erasable units are left"):
        erase_units(model, ["layer2.0"])


# -- scores ---------------------------------------------------------------------------------

def test_gate_and_gate_bn_scores():
    model = tiny("resnet14")
    assert score_units(model, "gate") == dict.fromkeys(erasable_units(model), 1.0)  # no gate: w=1
    add_gates(model)
    set_gates(model, {"layer1.0": 0.5, "layer1.1": -0.1, "layer2.1": 2.0, "layer3.1": -0.3})
    s = score_units(model)
    assert s == pytest.approx({"layer1.0": 0.5, "layer1.1": 0.1, "layer2.1": 2.0,
                               "layer3.1": 0.3})
    assert sorted(s, key=s.get) == ["layer1.1", "layer3.1", "layer1.0", "layer2.1"]
    gb = score_units(model, "gate_bn")
    for name, w in s.items():
        gamma = model.get_submodule(name).bn2.weight.detach().norm().item()
        assert gb[name] == pytest.approx(w * gamma, rel=1e-6)


def test_random_score_is_seeded():
    model = tiny("resnet14")
    a, b = score_units(model, "random", seed=3), score_units(model, "random", seed=3)
    assert a == b and list(a) == erasable_units(model)
    assert a != score_units(model, "random", seed=4)


def test_norm_score():
    model = tiny("resnet8")  # one erasable unit, fed by the stem
    add_gates(model)
    set_gates(model, {"layer1.0": -0.5})
    xs = torch.randn(10, 3, 8, 8)
    loader = [(xs[:4], None), (xs[4:8], None), (xs[8:], None)]
    model.train()
    bn_state = copy.deepcopy(model.state_dict())
    s = score_units(model, "norm", loader=loader, num_batches=2)
    assert model.training  # mode restored, BN statistics untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in bn_state.items())
    with torch.no_grad():
        model.eval()
        stem = model.relu(model.bn1(model.conv1(xs[:8])))
        f = model.layer1[0].branch(stem) * -0.5
        expected = f.flatten(1).norm(dim=1).mean().item()
    assert s["layer1.0"] == pytest.approx(expected, rel=1e-5)
    set_gates(model, {"layer1.0": 0.0})
    assert score_units(model, "norm", loader=loader) == {"layer1.0": 0.0}


def test_score_errors():
    model = tiny("resnet8")
    with pytest.raises(UserError, match="unknown priority score 'l1'.*gate, norm, gate_bn"):
        score_units(model, "l1")
    with pytest.raises(UserError, match="'norm' priority score needs data: pass a loader"):
        score_units(model, "norm")
    with pytest.raises(UserError, match="yielded no batches"):
        score_units(model, "norm", loader=[])


# -- user models ----------------------------------------------------------------------------

class MyBlock(ResidualUnit):
    """A user's own residual block: the branch lives in an nn.Sequential named ``body``."""

    last_bn = "body.4"

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                  nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.downsample = (None if cin == cout and stride == 1 else
                           nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                         nn.BatchNorm2d(cout)))
        self.relu = nn.ReLU()
        self._init_gate(False)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                                  nn.ReLU())
        self.blocks = nn.ModuleDict({"a": MyBlock(4, 4), "down": MyBlock(4, 8, 2)})
        self.tail = MyBlock(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        x = self.blocks["down"](self.blocks["a"](x))
        x = self.tail(x)
        return self.head(x.mean((2, 3)))


def test_user_model_with_residual_unit_subclasses():
    model = randomize_bn(MyNet()).eval()
    x = torch.randn(2, 3, 8, 8)
    before = logits(model, x)
    assert erasable_units(model) == ["blocks.a", "tail"]
    assert add_gates(model) == ["blocks.a", "tail"]
    assert torch.equal(logits(model, x), before)
    set_gates(model, {"blocks.a": 0.0, "tail": 0.7})
    gated = logits(model, x)
    s = score_units(model, "norm", loader=[(x, None)])
    assert s["blocks.a"] == 0.0 and s["tail"] > 0
    assert score_units(model, "gate_bn")["tail"] == pytest.approx(
        0.7 * model.tail.body[4].weight.norm().item(), rel=1e-6)
    erase_units(model, ["blocks.a"])
    assert isinstance(model.blocks["a"], nn.Identity)
    assert torch.equal(logits(model, x), gated)
    fold_gates(model)
    torch.testing.assert_close(logits(model, x), gated, atol=1e-5, rtol=0)
    assert depth(model) == 1 + 2 + 2 + 1  # stem, down block, tail, head
    with pytest.raises(UserError, match="cannot erase 'blocks.down': its shortcut"):
        erase_units(model, ["blocks.down"])


class NoLastBN(MyBlock):
    last_bn = "body.9"


def test_protocol_errors():
    model = MyNet()
    model.tail = NoLastBN(8, 8)
    add_gates(model)
    with pytest.raises(UserError, match="'tail': last_bn='body.9' names no submodule"):
        fold_gates(model)


# -- the loop -------------------------------------------------------------------------------

def make_data(n_train=32, n_val=16, size=8, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n_train + n_val,), generator=g)
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=16)
    return train, val


class SGDTrainer:
    """A stand-in for resprune.train.Trainer: seeded plain SGD (records its calls)."""

    calls: list = []

    def __init__(self, model, train_loader, val_loader, config, run_dir):
        self.model, self.loader, self.config, self.run_dir = model, train_loader, config, run_dir
        SGDTrainer.calls.append((config.epochs, config.lr, config.seed, run_dir.parent.name))

    def fit(self, resume=False):
        torch.manual_seed(self.config.seed)
        opt = torch.optim.SGD(self.model.parameters(), lr=self.config.lr, momentum=0.9,
                              weight_decay=5e-4)
        self.model.train()
        for _ in range(self.config.epochs):
            for x, y in self.loader:
                opt.zero_grad()
                nn.functional.cross_entropy(self.model(x), y).backward()
                opt.step()
        return []


class ScriptedEval:
    """Evaluate stub: returns scripted val accuracies and keeps a copy of each evaluated net."""

    def __init__(self, accs):
        self.accs, self.states = list(accs), []

    def __call__(self, model, loader):
        self.states.append({k: v.clone() for k, v in model.state_dict().items()})
        acc = self.accs.pop(0) if len(self.accs) > 1 else self.accs[0]
        return {"top1": acc, "loss": 1.0, "n": 16}


def cfg(**kw):
    base = {"retrain_epochs": 1, "adapt_epochs": 1, "retrain_lr": 0.01,
            "train": TrainConfig(device="cpu")}
    return ImplosionConfig(**{**base, **kw})


def run(model, tmp_path, config, accs=(0.5,), classes=10, **kw):
    train, val = make_data(classes=classes)
    ev = ScriptedEval(accs)
    SGDTrainer.calls = []
    res = implode(model, train, val, config, tmp_path, trainer_factory=SGDTrainer,
                  evaluate_fn=ev, progress=False, **kw)
    return res, ev


def test_implode_adapts_gates_then_erases_until_nothing_is_left(tmp_path):
    model = tiny("resnet14")
    d0, p0 = depth(model), count_params(model)
    res, _ = run(model, tmp_path, cfg(per_step=1, fold=False))
    assert SGDTrainer.calls[0] == (1, 0.01, 0, "step_000")  # gates adapted first
    assert [c[2] for c in SGDTrainer.calls] == [0, 1, 2, 3, 4]  # step k is seeded seed + k
    assert res.stop_reason == "nothing_erasable"
    assert sorted(res.erased) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]
    assert [h["accepted"] for h in res.history] == [True] * 4
    assert [h["epochs"] for h in res.history] == [1] * 4
    assert res.initial["params"] == p0 and res.initial["depth"] == d0 == 14
    assert res.baseline["params"] == p0 + 4  # four gates
    widths = {"layer1": 4, "layer2": 8, "layer3": 16}
    prev_p, prev_m, prev_d = res.baseline["params"], res.baseline["macs"], res.baseline["depth"]
    for h in res.history:
        (name,) = h["erased"]
        c = widths[name.split(".")[0]]
        hw = {"layer1": 64, "layer2": 16, "layer3": 4}[name.split(".")[0]]  # 8x8 input
        assert prev_p - h["params"] == 2 * c * c * 9 + 4 * c + 1  # convs, BNs, gate
        assert prev_m - h["macs"] == 2 * c * c * 9 * hw
        assert prev_d - h["depth"] == 2
        assert h["priorities"] == {name: min(h["scores"].values())}  # the lowest priority
        assert name in h["scores"]
        prev_p, prev_m, prev_d = h["params"], h["macs"], h["depth"]
    assert len(res.history[0]["scores"]) == 4 and len(res.history[3]["scores"]) == 1
    assert depth(model) == d0 - 8 and res.final["depth"] == d0 - 8
    assert json.loads((tmp_path / "state.json").read_text())["erased"] == res.erased


def test_implode_stops_at_max_steps_and_target_depth(tmp_path):
    res, _ = run(tiny("resnet14"), tmp_path / "a", cfg(per_step=3, max_steps=1))
    assert res.stop_reason == "max_steps" and [len(h["erased"]) for h in res.history] == [3]
    res, _ = run(tiny("resnet14"), tmp_path / "b", cfg(target_depth=10, per_step=1))
    assert res.stop_reason == "target_depth" and res.final["depth"] == 10
    assert len(res.history) == 2 and len(res.erased) == 2
    # per_step=3, but one unit reaches 12 layers; gates present already: no adaptation
    res, _ = run(tiny("resnet14", gates=True), tmp_path / "c", cfg(target_depth=12, per_step=3))
    assert [len(h["erased"]) for h in res.history] == [1] and res.final["depth"] == 12
    assert SGDTrainer.calls[0][3] == "step_001" and res.adapt_epochs == 0


def test_rejected_step_rolls_back_exactly_and_stops(tmp_path):
    model = tiny("resnet14")
    # baseline 0.50, step 1 at 0.50 (accepted), step 2 at 0.49 (rolled back), final 0.50
    res, ev = run(model, tmp_path, cfg(fold=False), accs=[0.5, 0.5, 0.49, 0.5])
    assert [h["accepted"] for h in res.history] == [True, False]
    assert res.stop_reason == "accuracy"
    assert res.erased == res.history[0]["erased"]
    assert res.history[1]["erased"][0] in erasable_units(model)  # the unit is back
    accepted, rejected = ev.states[1], ev.states[2]
    final = model.state_dict()
    assert final.keys() == accepted.keys()
    assert all(torch.equal(final[k], accepted[k]) for k in final)
    assert any(not torch.equal(final[k], rejected[k]) for k in rejected if k in final)
    # the tolerance is in percentage points of val top-1: 1 point accepts 0.49
    res, _ = run(tiny("resnet14"), tmp_path / "tol", cfg(tolerance=1.0, max_steps=2),
                 accs=[0.5, 0.5, 0.49])
    assert [h["accepted"] for h in res.history] == [True, True]


def test_impossible_tolerance_rejects_the_first_step(tmp_path):
    model = tiny("resnet14", gates=True)
    start = copy.deepcopy(model.state_dict())
    res, _ = run(model, tmp_path, cfg(fold=False), accs=[1.0, 0.99])
    assert res.erased == [] and [h["accepted"] for h in res.history] == [False]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())
    assert json.loads((tmp_path / "state.json").read_text())["phase"] == "done"


def test_final_model_is_written_and_folded(tmp_path):
    model = tiny("resnet14")
    res, _ = run(model, tmp_path, cfg(max_steps=1, final_epochs=2, final_lr=0.001))
    assert SGDTrainer.calls[-1][:3] == (2, 0.001, 2)
    assert res.final["epochs"] == 2 and len(res.gates) == 3 and gates(model) == {}
    loaded = resprune.load(tmp_path).eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(logits(loaded, x), logits(model.eval(), x))
    assert spec_of(loaded)["stages"] == spec_of(model)["stages"]
    assert not list((tmp_path / "steps").glob("*/model.safetensors"))  # only the final net


def test_implode_user_model(tmp_path):
    model = randomize_bn(MyNet())
    res, _ = run(model, tmp_path, cfg(), classes=3)
    assert sorted(res.erased) == ["blocks.a", "tail"] and res.final["depth"] == 4
    assert (tmp_path / "model.safetensors").is_file()
    assert not (tmp_path / "arch.json").exists()  # not a zoo model: weights only


# -- resume, with the real Trainer and resprune loaders --------------------------------------

class Killed(Exception):
    pass


class KillAt(Callback):
    def __init__(self, step):
        self.step = step

    def after_step(self, trainer):
        if trainer.global_step == self.step:
            raise Killed


def real_trainer(kill_call=None, kill_step=None):
    """Factory for resprune.train.Trainer; optionally dies inside its kill_call-th run."""
    count = {"n": 0}

    def make(model, train_loader, val_loader, config, run_dir):
        count["n"] += 1
        cbs = [KillAt(kill_step)] if count["n"] == kill_call else []
        return Trainer(model, train_loader, val_loader, config, run_dir, callbacks=cbs,
                       progress=False)
    return make


@pytest.fixture(scope="module")
def synth():
    bundle = load_dataset("synthetic", val_fraction=0.25, num_classes=4, image_size=8,
                          train_size=64, test_size=8, augment=True)
    return bundle


def loaders(bundle):
    return (make_loader(bundle, "train", 16, train=True, seed=0),
            make_loader(bundle, "val", 16, train=False))


RESUME_CFG = {"max_steps": 2, "final_epochs": 1, "retrain_epochs": 2, "score": "norm",
              "train": TrainConfig(device="cpu", lr=0.01)}


@pytest.fixture(scope="module")
def reference(synth, tmp_path_factory):
    start = tiny("resnet14", num_classes=4)
    model = copy.deepcopy(start)
    res = implode(model, *loaders(synth), cfg(tolerance=100.0, **RESUME_CFG),
                  tmp_path_factory.mktemp("ref"), trainer_factory=real_trainer(),
                  progress=False)
    return start, model, res


@pytest.mark.parametrize("kill", ["mid_retrain_step_2", "before_state_step_2", "final"])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, kill, monkeypatch, synth,
                                                     reference):
    start, ref_model, ref = reference
    assert len(ref.history) == 2 and ref.stop_reason == "max_steps"
    config = cfg(tolerance=100.0, **RESUME_CFG)
    model = copy.deepcopy(start)
    if kill == "mid_retrain_step_2":  # calls: adapt, step 1, step 2 (dies in its epoch 2)
        factory = real_trainer(kill_call=3, kill_step=len(loaders(synth)[0]) + 1)
    elif kill == "final":
        factory = real_trainer(kill_call=4, kill_step=1)  # adapt, step 1, step 2, final
    else:
        factory = real_trainer()
        real_write = loop_mod.write_state

        def dying_write(run_dir, state):
            if state["phase"] == "steps" and len(state["history"]) == 2:
                raise Killed
            real_write(run_dir, state)
        monkeypatch.setattr(loop_mod, "write_state", dying_write)
    with pytest.raises(Killed):
        implode(model, *loaders(synth), config, tmp_path, trainer_factory=factory,
                progress=False)
    monkeypatch.undo()
    if kill == "mid_retrain_step_2":
        assert (tmp_path / "steps/step_002/train/train_state.pt").is_file()

    with pytest.raises(UserError, match="already holds an implosion run; pass resume=True"):
        implode(copy.deepcopy(start), *loaders(synth), config, tmp_path)
    model = copy.deepcopy(start)  # a fresh process starts again from the same checkpoint
    res = implode(model, *loaders(synth), config, tmp_path, trainer_factory=real_trainer(),
                  resume=True, progress=False)
    assert res.erased == ref.erased and res.stop_reason == ref.stop_reason
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in res.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in ref.history]
    assert res.final == ref.final
    a, b = model.state_dict(), ref_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if kill == "final":  # resuming a finished run changes nothing and trains nothing
        again = implode(copy.deepcopy(start), *loaders(synth), config, tmp_path,
                        trainer_factory=real_trainer(kill_call=1, kill_step=1), resume=True,
                        progress=False)
        assert again.erased == ref.erased and again.final == ref.final


def test_resume_refuses_other_options_or_model(tmp_path):
    train, val = make_data()
    start = tiny("resnet14")
    implode(copy.deepcopy(start), train, val, cfg(max_steps=1, retrain_epochs=0), tmp_path,
            trainer_factory=SGDTrainer, progress=False)
    with pytest.raises(UserError, match=r"different options \(max_steps\)"):
        implode(copy.deepcopy(start), train, val, cfg(max_steps=2, retrain_epochs=0),
                tmp_path, trainer_factory=SGDTrainer, resume=True)
    # the device may change on resume (as for a training run); the finished run is returned
    again = implode(copy.deepcopy(start), train, val,
                    cfg(max_steps=1, retrain_epochs=0, train=TrainConfig(device="auto")),
                    tmp_path, trainer_factory=SGDTrainer, resume=True, progress=False)
    assert again.stop_reason == "max_steps"
    with pytest.raises(UserError, match="not the one the run .* started from"):
        implode(tiny("resnet14", shortcut="B"), train, val, cfg(max_steps=1, retrain_epochs=0),
                tmp_path, trainer_factory=SGDTrainer, resume=True)


# -- bad options ------------------------------------------------------------------------------

@pytest.mark.parametrize("opts,msg", [
    ({"tolerance": -0.5}, "tolerance must be a number >= 0"),
    ({"tolerance": float("nan")}, "tolerance must be a number >= 0"),
    ({"per_step": 0}, r"per_step must be an integer >= 1, got 0"),
    ({"score": "l2"}, "unknown priority score 'l2'; choose one of: gate, norm"),
    ({"max_steps": 0}, "max_steps must be an integer >= 1"),
    ({"target_depth": 0}, "target_depth must be an integer >= 1"),
    ({"retrain_lr": 0}, "retrain_lr must be a number > 0, got 0"),
    ({"retrain_epochs": -1}, "retrain_epochs must be an integer >= 0"),
    ({"seed": True}, "seed must be an integer >= 0"),
    ({"train": TrainConfig(momentum=2.0)}, "training option momentum must be a number >= 0 "
                                           "and < 1, got 2.0"),
    ({"train": {"lr": 0.1}}, "train must be a resprune.train.TrainConfig, got dict"),
])
def test_bad_options(opts, msg):
    with pytest.raises(UserError, match=msg):
        ImplosionConfig(**opts).validate()


def test_bad_loop_inputs(tmp_path):
    train, val = make_data()
    with pytest.raises(UserError, match="target_depth 20 is above the model's depth 14"):
        implode(tiny("resnet14"), train, val, cfg(target_depth=20), tmp_path,
                trainer_factory=SGDTrainer)
    with pytest.raises(UserError, match="needs a validation loader"):
        implode(tiny("resnet14"), train, None, cfg(), tmp_path, trainer_factory=SGDTrainer)
    with pytest.raises(UserError, match="validation loader yields no batches"):
        implode(tiny("resnet14"), train, [], cfg(), tmp_path, trainer_factory=SGDTrainer)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(UserError, match="Sequential has no erasable residual unit"):
        implode(net, train, val, cfg(), tmp_path, trainer_factory=SGDTrainer)
    with pytest.raises(UserError, match="unknown priority score 'l2'"):
        implode(tiny("resnet14"), train, val, cfg(score="l2"), tmp_path)
    assert not (tmp_path / "state.json").exists()


def test_patience_tries_the_next_candidates_after_a_rejection(tmp_path):
    model = tiny("resnet14")
    # baseline 0.5; step 1 rejected, step 2 accepted, steps 3 and 4 rejected: patience 2 stops
    res, _ = run(model, tmp_path, cfg(patience=2, fold=False),
                 accs=[0.5, 0.4, 0.5, 0.4, 0.4, 0.5])
    assert [h["accepted"] for h in res.history] == [False, True, False, False]
    assert res.stop_reason == "accuracy"
    rejected = [h["erased"][0] for h in res.history if not h["accepted"]]
    assert len(set(rejected)) == 3  # a rejected unit is never tried again
    assert res.erased == res.history[1]["erased"]
    # with patience 1 (the default) the first rejection ends the loop
    res, _ = run(tiny("resnet14"), tmp_path / "p1", cfg(fold=False), accs=[0.5, 0.4, 0.5])
    assert [h["accepted"] for h in res.history] == [False] and res.stop_reason == "accuracy"


def test_screen_erases_the_unit_whose_removal_costs_least(tmp_path):
    import resprune.implosion.candidates as loop

    losses = {"layer1.0": 3.0, "layer1.1": 2.0, "layer2.1": 1.0, "layer3.1": 0.5}
    seen = []

    def fake_loss(model, loader, batches):
        # the one unit swapped for an identity is the one being screened
        names = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(2)]
        erased = [n for n in names if isinstance(model.get_submodule(n), nn.Identity)]
        seen.append((tuple(erased), batches))
        return losses[erased[-1]]

    model = tiny("resnet14")
    old = loop._loss_on
    loop._loss_on = fake_loss
    try:
        res, _ = run(model, tmp_path, cfg(screen=3, screen_batches=2, max_steps=1))
    finally:
        loop._loss_on = old
    (step,) = res.history
    ranked = sorted(step["scores"], key=step["scores"].get)[:3]  # the 3 lowest priorities
    assert sorted(step["screen_loss"]) == sorted(ranked)  # exactly those were screened
    assert all(b == 2 for _, b in seen) and len(seen) == 3
    assert step["erased"] == [min(ranked, key=losses.get)]  # the cheapest of them
    assert all(not isinstance(model.get_submodule(n), nn.Identity)
               for n in ranked if n not in step["erased"])  # the others were put back


@pytest.mark.parametrize("screen_cost", ["params", "macs"])
def test_screen_cost_erases_the_least_loss_rise_per_cost(tmp_path, screen_cost):
    """screen_cost: the screened units are ranked by (loss cut - loss intact) / cost. Scripted
    losses: layer3.1's rise (0.4) is the largest but it holds far more params than the
    stage-1/2 units, so per param it goes first; per MAC (equal MACs per unit of a stage
    pair) layer1.1's smaller rise wins, like the plain loss ranking would."""
    import resprune.implosion.candidates as cand
    from resprune.implosion.candidates import unit_costs

    intact = 1.0
    rise = {"layer1.0": 0.15, "layer1.1": 0.1, "layer2.1": 0.2, "layer3.1": 0.4}
    calls = []

    def fake_loss(model, loader, batches):
        erased = [n for n in rise if isinstance(model.get_submodule(n), nn.Identity)]
        calls.append(tuple(erased))
        return intact + (rise[erased[0]] if erased else 0.0)

    model = tiny("resnet14")
    costs = unit_costs(tmp_path / "costs", tiny("resnet14"), (3, 8, 8), cfg(),
                       screen_cost)
    if screen_cost == "params":  # two 3x3 convs + two BNs of c channels: 18 c^2 + 4 c
        assert (costs["layer1.1"], costs["layer3.1"]) == (18 * 4 * 4 + 16, 18 * 16 * 16 + 64)
    else:  # half the resolution, twice the channels: every unit the same MACs
        assert len(set(costs.values())) == 1
    old = cand._loss_on
    cand._loss_on = fake_loss
    try:
        res, _ = run(model, tmp_path / "run", cfg(
            screen=6, screen_batches=1, screen_cost=screen_cost, max_steps=1, fold=False,
            adapt_epochs=0), accs=[0.5])
    finally:
        cand._loss_on = old
    (step,) = res.history
    assert step["screen_loss"] == pytest.approx({n: intact + r for n, r in rise.items()})
    want = {n: r / costs[n] for n, r in rise.items()}
    assert step["screen_intact_loss"] == intact
    assert step["screen_rank"] == pytest.approx(want)
    assert step["erased"] == [min(want, key=want.get)]
    assert step["erased"] == (["layer3.1"] if screen_cost == "params" else ["layer1.1"])
    assert calls.count(()) == 1  # the intact net was scored once


@pytest.mark.parametrize("k,rounds,want", [(12, 5, [3, 3, 2, 2, 2]), (12, 1, [12]),
                                            (6, 3, [2, 2, 2]), (2, 5, [1, 1]), (1, 4, [1])])
def test_round_sizes_split_a_step_as_evenly_as_possible(k, rounds, want):
    from resprune.implosion.candidates import round_sizes

    assert round_sizes(k, rounds) == want and sum(want) == k


@pytest.mark.parametrize("rounds,screen_cost", [(1, "none"), (2, "none"), (2, "macs")])
def test_screen_rounds_choose_each_unit_with_the_earlier_ones_cut(tmp_path, rounds,
                                                                  screen_cost):
    """Scripted losses: layer1.0 and layer1.1 each cost little alone but much together
    (the net loses a whole stage); layer2.1 costs a little more alone. One round takes the
    two cheapest alone; two rounds take layer1.0, then screen again with it cut, see that
    layer1.1 now costs much, and take layer2.1. Per MAC (every unit of resnet14 the same
    MACs) the order is the loss's, the rises measured from the net as it stands."""
    import resprune.implosion.candidates as cand

    alone = {"layer1.0": 0.1, "layer1.1": 0.15, "layer2.1": 0.3, "layer3.1": 0.5}
    calls = []

    def fake_loss(model, loader, batches):
        erased = frozenset(n for n in alone if isinstance(model.get_submodule(n),
                                                          nn.Identity))
        calls.append(erased)
        if erased == {"layer1.0", "layer1.1"}:
            return 5.0
        return 1.0 + sum(alone[n] for n in erased)

    model = tiny("resnet14")
    old = cand._loss_on
    cand._loss_on = fake_loss
    try:
        res, _ = run(model, tmp_path, cfg(screen=4, per_step=2, screen_rounds=rounds,
                                          screen_cost=screen_cost, max_steps=1, fold=False,
                                          adapt_epochs=0), accs=[0.5])
    finally:
        cand._loss_on = old
    (step,) = res.history
    assert step["screen_loss"] == pytest.approx({n: 1.0 + v for n, v in alone.items()})
    if rounds == 1:
        assert step["erased"] == ["layer1.0", "layer1.1"] and "screen_rounds" not in step
        assert len(calls) == 4
        return
    assert step["erased"] == ["layer1.0", "layer2.1"]
    first, second = step["screen_rounds"]
    assert first["erased_before"] == [] and first["chosen"] == ["layer1.0"]
    assert second["erased_before"] == ["layer1.0"] and second["chosen"] == ["layer2.1"]
    assert second["loss"] == pytest.approx({"layer1.1": 5.0, "layer2.1": 1.4,
                                            "layer3.1": 1.6})
    scored = 4 + 3 + (2 if screen_cost == "macs" else 0)  # + the net as it stands, a round
    assert len(calls) == scored and all("layer1.0" in c for c in calls[-3:])
    if screen_cost == "macs":
        from resprune.implosion.candidates import unit_costs

        costs = unit_costs(tmp_path / "costs", tiny("resnet14"), (3, 8, 8), cfg(), "macs")
        mac = costs["layer1.1"]
        assert set(costs.values()) == {mac}  # every unit the same MACs
        assert step["screen_rank"] == pytest.approx({n: v / mac for n, v in alone.items()})
        assert (first["intact"], second["intact"]) == (1.0, pytest.approx(1.1))
        assert second["rank"] == pytest.approx({"layer1.1": 3.9 / mac, "layer2.1": 0.3 / mac,
                                                "layer3.1": 0.5 / mac})
    # only the chosen units are identities afterwards; the others were put back
    assert [n for n in alone if isinstance(model.get_submodule(n), nn.Identity)] == \
        ["layer1.0", "layer2.1"]


def test_intact_loss_uses_the_candidates_statistics_and_puts_them_back():
    """The loss the screen's rises are measured from: the intact net with the statistics
    re-estimated on the same images as every candidate's; the net's own come back."""
    from types import SimpleNamespace

    from resprune.implosion.candidates import _loss_on, intact_loss
    from resprune.measure import recalibrate_batchnorm

    train, val = make_data()
    model = tiny("resnet14", gates=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_ = SimpleNamespace(config=cfg(screen=3, screen_batches=1, recalibrate=16), model=model,
                           train_loader=train, val_loader=val)
    got = intact_loss(run_, seed=5)
    ref = copy.deepcopy(model)
    recalibrate_batchnorm(ref, train, 16, seed=5)
    assert got == _loss_on(ref.eval(), val, 1)
    assert got != _loss_on(copy.deepcopy(model).eval(), val, 1)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_retrain_needed_accepts_free_steps_and_retrains_only_failing_ones(tmp_path):
    """retrain="needed": each step is first evaluated with its units cut and no training.
    Scripted val top-1: baseline 0.5; step 1 cut 0.5 (holds: no training); step 2 cut 0.3
    (fails: the units come back, then cut + retraining reach 0.5: accepted); step 3 cut 0.3,
    retrained 0.3: rolled back, stop."""
    model = tiny("resnet14", gates=True)
    res, ev = run(model, tmp_path, cfg(retrain="needed", fold=False),
                  accs=[0.5, 0.5, 0.3, 0.5, 0.3, 0.3, 0.5])
    assert [h["accepted"] for h in res.history] == [True, True, False]
    assert [h["epochs"] for h in res.history] == [0, 1, 1]
    assert [h["val_top1"] for h in res.history] == [0.5, 0.5, 0.3]
    # trainings: steps 2 and 3 only (the gates were there already: no adaptation)
    assert [c[3] for c in SGDTrainer.calls] == ["step_002", "step_003"]
    # step 1 was evaluated with its unit cut and nothing trained: every surviving weight is
    # the start net's
    (first,) = res.history[0]["erased"]
    start, cut = ev.states[0], ev.states[1]
    assert not any(k.startswith(first + ".") for k in cut)
    assert all(torch.equal(cut[k], start[k]) for k in cut)
    # step 2's failed cut changed nothing either; its retrained net did change
    (second,) = res.history[1]["erased"]
    assert all(torch.equal(ev.states[2][k], start[k]) for k in ev.states[2])
    assert any(not torch.equal(ev.states[3][k], start[k]) for k in ev.states[3])
    assert res.erased == [first, second]
    assert all(not isinstance(model.get_submodule(n), nn.Identity)
               for n in res.history[2]["erased"])  # the rolled-back unit is back


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_screen_with_recalibrate_scores_each_cut_with_its_own_statistics():
    """recalibrate=N: each screened loss is the one of the cut net with its BatchNorm
    statistics re-estimated on N training images (the same images for every candidate),
    and the net's statistics are put back after each candidate."""
    from types import SimpleNamespace

    from resprune.implosion.candidates import _loss_on, screen
    from resprune.measure import recalibrate_batchnorm

    train, val = make_data()
    model = tiny("resnet14", gates=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    candidates = {"layer1.0": 0.1, "layer1.1": 0.3, "layer2.1": 0.2, "layer3.1": 0.9}
    config = cfg(screen=3, screen_batches=1, recalibrate=16)
    got = screen(SimpleNamespace(config=config, model=model, train_loader=train,
                                 val_loader=val), candidates, seed=5)
    assert list(got) == sorted(got, key=got.get)
    assert sorted(got) == ["layer1.0", "layer1.1", "layer2.1"]  # the 3 lowest priorities
    for name, loss in got.items():
        cut = copy.deepcopy(model)
        erase_units(cut, [name])
        recalibrate_batchnorm(cut, train, 16, seed=5)
        cut.eval()
        assert loss == _loss_on(cut, val, 1)
        stale = copy.deepcopy(model)
        erase_units(stale, [name])
        assert loss != _loss_on(stale.eval(), val, 1)  # re-estimation changed the score
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)  # statistics put back


class NoTraining(SGDTrainer):
    def fit(self, resume=False):
        return []


def test_retrain_needed_with_recalibrate_keeps_new_statistics_only_when_accepted(tmp_path):
    """Scripted val top-1: baseline 0.5; step 1's cut holds (kept with the statistics
    re-estimated on the cut net); step 2's cut fails, so its unit and the statistics come back
    before the (here no-op) retraining cuts it again: accepted with step 1's statistics."""
    from resprune.measure import recalibrate_batchnorm

    model = tiny("resnet14", gates=True)
    start = copy.deepcopy(model)
    train, val = make_data()
    ev = ScriptedEval([0.5, 0.5, 0.3, 0.5])
    res = implode(model, train, val, cfg(retrain="needed", recalibrate=16, fold=False,
                                         erase="cut", max_steps=2, seed=3),
                  tmp_path, trainer_factory=NoTraining, evaluate_fn=ev, progress=False)
    assert [h["accepted"] for h in res.history] == [True, True]
    assert [h["epochs"] for h in res.history] == [0, 1]
    # each step's untrained score is its top-1 right after the cut (step 2: the failed check)
    assert [h["cut_val_top1"] for h in res.history] == [0.5, 0.3]
    assert [h["val_top1"] for h in res.history] == [0.5, 0.5]
    (first,), (second,) = res.history[0]["erased"], res.history[1]["erased"]
    expected = copy.deepcopy(start)
    erase_units(expected, [first])
    recalibrate_batchnorm(expected, train, 16, seed=3 + 1)  # step 1 reads under seed + 1
    want = bn_buffers(expected)
    stale = bn_buffers(start)
    assert any(not torch.equal(stale[k], want[k]) for k in want)  # re-estimation changed them
    kept = [k for k in want if not k.startswith(second + ".")]
    assert all(torch.equal(ev.states[1][k], want[k]) for k in want)  # step 1 as accepted
    # step 2's trial cut re-estimated other statistics (and was scored as failing) ...
    assert any(not torch.equal(ev.states[2][k], want[k]) for k in kept)
    # ... which were put back before the retraining and after it (no-op training)
    assert all(torch.equal(ev.states[3][k], want[k]) for k in kept)
    assert all(torch.equal(model.state_dict()[k], want[k]) for k in kept)


def test_cut_with_recalibrate_is_measured_before_retraining_and_trains_the_same(tmp_path):
    """erase="cut", retrain="always" and recalibrate=N: each step evaluates its cut net, its
    BatchNorm statistics re-estimated under the step's seed, before retraining, and records
    that as cut_val_top1; the retrained weights equal those of the same run without it
    (training-mode passes normalise with batch statistics)."""
    from resprune.measure import recalibrate_batchnorm

    start = tiny("resnet14", gates=True)
    train, val = make_data()
    results = {}
    for recal, accs in ((0, [0.5]), (16, [0.5, 0.25, 0.5])):
        model = copy.deepcopy(start)
        ev = ScriptedEval(accs)
        res = implode(model, train, val, cfg(recalibrate=recal, fold=False, erase="cut",
                                             max_steps=1, seed=3),
                      tmp_path / str(recal), trainer_factory=SGDTrainer, evaluate_fn=ev,
                      progress=False)
        results[recal] = (model, res, ev)
    plain, measured = results[0][1].history[0], results[16][1].history[0]
    assert "cut_val_top1" not in plain and plain["val_top1"] == 0.5 and plain["accepted"]
    assert len(results[0][2].states) == 3  # baseline, step 1, the final net
    assert measured["cut_val_top1"] == 0.25 and measured["val_top1"] == 0.5
    assert measured["cut_val_loss"] == 1.0 and measured["accepted"]
    # the second evaluation saw the start net with the step's unit cut and re-estimated
    (name,) = measured["erased"]
    expected = copy.deepcopy(start)
    erase_units(expected, [name])
    recalibrate_batchnorm(expected, train, 16, seed=3 + 1)
    seen = results[16][2].states[1]
    assert seen.keys() == expected.state_dict().keys()
    assert all(torch.equal(seen[k], v) for k, v in expected.state_dict().items())
    # ... and the retraining from there ended at the same weights as without the measurement
    a, b = dict(results[0][0].named_parameters()), dict(results[16][0].named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(x, y) for x, y in zip(results[0][0].buffers(),
                                                      results[16][0].buffers()))


def test_a_fade_has_no_measurement_right_after_the_cut(tmp_path):
    """A fade erases units whose gates are exactly 0: nothing to measure before retraining,
    even with recalibrate set; the step evaluates once, after its retraining."""
    class FadeTrainer(NoTraining):
        def __init__(self, *args, callbacks=()):
            super().__init__(*args)

    model = tiny("resnet14", gates=True)
    train, val = make_data()
    ev = ScriptedEval([0.5])
    res = implode(model, train, val, cfg(recalibrate=16, erase="fade", max_steps=1, fold=False),
                  tmp_path, trainer_factory=FadeTrainer, evaluate_fn=ev, progress=False)
    assert res.history[0]["accepted"] and "cut_val_top1" not in res.history[0]
    assert len(ev.states) == 3  # baseline, step 1, the final net


def test_cut_with_reconstruct_refits_the_rest_and_puts_a_failed_cut_back(tmp_path):
    """reconstruct=N with retrain="needed" (scripted val top-1: baseline 0.5; step 1's cut
    holds, step 2's fails, its no-op retraining holds): step 1 keeps the net re-fitted to the
    one before its cut (images read under the step's seed); step 2's failed trial is undone
    exactly before the retraining cuts and re-fits again; both steps record the fit."""
    from resprune.train import reconstruct

    model = tiny("resnet14", gates=True)
    start = copy.deepcopy(model)
    train, val = make_data()
    ev = ScriptedEval([0.5, 0.5, 0.3, 0.5])
    res = implode(model, train, val, cfg(retrain="needed", reconstruct=16, fold=False,
                                         erase="cut", max_steps=2, seed=3),
                  tmp_path, trainer_factory=NoTraining, evaluate_fn=ev, progress=False)
    assert [h["accepted"] for h in res.history] == [True, True]
    assert [h["epochs"] for h in res.history] == [0, 1]
    assert [h["cut_val_top1"] for h in res.history] == [0.5, 0.3]
    for h in res.history:
        rec = h["reconstruction"]
        assert rec["samples"] == 16 and rec["layers_fitted"] > 0
        assert rec["error_after"] < rec["error_before"]
    (first,), (second,) = res.history[0]["erased"], res.history[1]["erased"]
    expected = copy.deepcopy(start)
    erase_units(expected, [first])
    reconstruct(start, expected, train, 16, seed=3 + 1)
    want = expected.state_dict()
    assert any(not torch.equal(want[k], start.state_dict()[k]) for k in want)  # re-fitted
    assert all(torch.equal(ev.states[1][k], want[k]) for k in want)  # step 1 as accepted
    # step 2: the trial cut (re-fitted) failed; the retraining's cut re-fitted the same way
    # from step 1's net, so the (no-op) retrained net is that trial net again
    again = copy.deepcopy(expected)
    erase_units(again, [second])
    reconstruct(expected, again, train, 16, seed=3 + 2)
    for state in (ev.states[2], ev.states[3], model.state_dict()):
        assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())


def test_reconstruct_needs_a_cut():
    with pytest.raises(UserError, match="reconstruct re-fits the net after a cut"):
        cfg(erase="fade", reconstruct=8).validate()
