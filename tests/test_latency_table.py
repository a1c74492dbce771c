"""Per-layer latency tables and latency-aware VACL pruning (targets, ranking, round_to auto)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from resprune import UserError, vacl
from resprune.cli import vacl as vacl_cli
from resprune.cli.main import main
from resprune.measure import latency_table as lt
from resprune.measure.latency_table import (
    LatencyTable,
    auto_multiple,
    conv_shapes,
    grid,
    measure_table,
)
from resprune.models import create

from .conftest import QUIET

CIFAR = (3, 32, 32)


def synthetic_table(model, per_channel=None, step: int = 1, model_ms: float = 0.0,
                    shape=CIFAR) -> LatencyTable:
    """A table whose conv time is ``k * ceil_step(cout) * ceil_step(cin)`` (``k`` per layer
    shape from ``per_channel(shape)``, default 1e-3): exact arithmetic to check against."""
    curves = {}
    every = conv_shapes(model, shape)
    for s in {s.key(): s for s in every.values()}.values():
        k = 1e-3 if per_channel is None else per_channel(s)

        def up(c: int) -> int:
            return -(-c // step) * step
        outs, ins = grid(s.out_channels), grid(s.in_channels)
        full = k * s.out_channels * s.in_channels
        curves[s.key()] = {"shape": {}, "full_ms": full, "out_points": outs,
                           "out_ms": [k * min(up(c), s.out_channels) * s.in_channels
                                      for c in outs],
                           "in_points": ins,
                           "in_ms": [k * s.out_channels * min(up(c), s.in_channels)
                                     for c in ins]}
    convs = sum(curves[s.key()]["full_ms"] for s in every.values())
    return LatencyTable("eager", 8, 1, curves, {"cpu": "test"}, max(model_ms, convs))


def test_grid_and_monotone_and_shapes():
    assert grid(5) == [1, 2, 3, 4, 5]
    assert grid(80) == list(range(1, 65)) + [72, 80]
    assert grid(1024)[-3:] == [960, 992, 1024]
    assert lt._monotone([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.0, 2.0, 4.0]
    shapes = conv_shapes(create("resnet20", width=16), CIFAR)
    assert len(shapes) == 1 + 9 * 2  # stem + 2 per unit; option A shortcuts hold no conv
    assert (shapes["conv1"].in_channels, shapes["conv1"].height) == (3, 32)
    assert (shapes["layer2.0.conv1"].stride, shapes["layer2.0.conv1"].height) == ((2, 2), 32)
    assert (shapes["layer2.0.conv2"].height, shapes["layer3.2.conv2"].height) == (16, 8)
    # stem, 16->16 @32, 16->32 s2 @32, 32->32 @16, 32->64 s2 @16, 64->64 @8
    assert len({v.key() for v in shapes.values()}) == 6


def test_prediction_is_separable_and_interpolated():
    model = create("resnet20", width=16)
    table = synthetic_table(model)
    s = conv_shapes(model, CIFAR)["layer3.1.conv1"]  # 64 -> 64
    assert table.conv_ms(s, 64, 64) == pytest.approx(1e-3 * 64 * 64)
    assert table.conv_ms(s, 10, 30) == pytest.approx(1e-3 * 10 * 30)
    assert table.conv_ms(s, 0, 30) == 0.0
    stair = synthetic_table(model, step=8)
    assert stair.conv_ms(s, 64, 9) == pytest.approx(1e-3 * 16 * 64)
    assert stair.conv_ms(s, 3, 16) == pytest.approx(1e-3 * 16 * 8)
    d = json.loads(json.dumps(stair.to_dict()))
    assert LatencyTable.from_dict(d).conv_ms(s, 3, 16) == stair.conv_ms(s, 3, 16)


def test_auto_multiple_reads_the_staircase():
    model = create("resnet20", width=16)
    assert auto_multiple(synthetic_table(model, step=8)) == 8
    assert auto_multiple(synthetic_table(model, step=4)) == 4
    assert auto_multiple(synthetic_table(model, step=1)) == 1
    assert auto_multiple(synthetic_table(create("resnet20", width=32), step=16)) == 16


def _noisy(table: LatencyTable, seed: int, scale: float) -> LatencyTable:
    """``table`` with every output-curve point multiplied by 1 + U(-scale, scale), then made
    non-decreasing as measured tables are."""
    g = torch.Generator().manual_seed(seed)
    d = copy.deepcopy(table.to_dict())
    for c in d["curves"].values():
        noise = 1 + scale * (2 * torch.rand(len(c["out_ms"]), generator=g) - 1)
        c["out_ms"] = lt._monotone([m * float(e) for m, e in zip(c["out_ms"], noise)])
    return LatencyTable.from_dict(d)


def test_auto_multiple_reads_noisy_staircases():
    model = create("resnet20", width=16)
    for seed in range(5):  # +-15 % per point: a loaded machine's one-thread timings
        assert auto_multiple(_noisy(synthetic_table(model, step=8), seed, 0.15)) == 8
        assert auto_multiple(_noisy(synthetic_table(model, step=1), seed, 0.15)) == 1


def test_auto_multiple_on_a_measured_onnxruntime_table():
    """ResNet-56's onnxruntime table (batch 64, one thread, a loaded AVX2 machine): the
    runtime computes in blocks of 8 channels; a rule reading single points took 4."""
    path = Path(__file__).parent / "fixtures" / "latency_table_r56_ort.json"
    table = LatencyTable.from_dict(json.loads(path.read_text()))
    assert (table.runtime, table.batch, table.threads) == ("onnxruntime", 64, 1)
    assert auto_multiple(table) == 8


def _bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.2
    return model


def test_latency_target_reaches_the_predicted_reduction_and_reports_it():
    model = _bn(create("resnet20", width=16))
    table = synthetic_table(model, model_ms=0.0)
    report = vacl.prune(copy.deepcopy(model), CIFAR, target_latency_reduction=0.4,
                        latency_table=table)
    lat = report["latency"]
    assert report["mode"] == "latency" and report["target_reached"]
    assert lat["predicted_reduction"] >= 0.4 and report["latency_reduction"] >= 0.4
    assert lat["predicted_before_ms"] == pytest.approx(table.model_ms)
    assert lat["predicted_after_ms"] == pytest.approx(
        lat["predicted_before_ms"] * (1 - lat["predicted_reduction"]))
    # the prediction of the pruned widths, layer by layer, equals the reported one
    pruned = copy.deepcopy(model)
    vacl.prune(pruned, CIFAR, target_latency_reduction=0.4, latency_table=table)
    before = conv_shapes(model, CIFAR)
    after = conv_shapes(pruned, CIFAR)
    predicted = sum(table.conv_ms(before[n], a.in_channels, a.out_channels)
                    for n, a in after.items())
    assert predicted == pytest.approx(lat["predicted_after_ms"])


def test_absolute_latency_target_is_a_reduction_of_the_prediction():
    model = _bn(create("resnet20", width=16))
    table = synthetic_table(model)
    total = table.model_ms
    r = vacl.prune(copy.deepcopy(model), CIFAR, target_latency=0.6 * total, latency_table=table)
    assert r["mode"] == "latency" and r["target_latency_ms"] == 0.6 * total
    assert r["target_reduction"] == pytest.approx(0.4) and r["target_reached"]
    assert r["latency"]["predicted_after_ms"] <= 0.6 * total + 1e-9
    r = vacl.prune(copy.deepcopy(model), CIFAR, target_latency=2 * total, latency_table=table)
    assert r["groups_removed"] == 0 and r["target_reduction"] == 0.0
    with pytest.raises(UserError, match="target_latency must be > 0 ms, got 0"):
        vacl.prune(copy.deepcopy(model), CIFAR, target_latency=0, latency_table=table)


def test_latency_cost_ranking_removes_expensive_channels_first():
    """With stage 1 (32x32) 50x more costly per channel than the rest, ranking by score per
    latency saved takes more stage-1 channels than ranking by score for the same target."""
    model = _bn(create("resnet20", width=16))
    table = synthetic_table(model, per_channel=lambda s: 5e-2 if s.height == 32 else 1e-3)

    def stage1_kept(cost):
        r = vacl.prune(copy.deepcopy(model), CIFAR, target_params_reduction=0.3,
                       latency_table=table, cost=cost)
        assert r["cost"] == cost and r["target_reached"]
        return sum(w for n, w in r["widths_after"].items() if n.startswith("layer1")), r

    plain, r_plain = stage1_kept("none")
    aware, r_aware = stage1_kept("latency")
    assert aware < plain
    assert r_aware["latency"]["predicted_reduction"] > r_plain["latency"]["predicted_reduction"]


def test_round_to_auto_takes_the_table_step():
    model = _bn(create("resnet20", width=16))
    table = synthetic_table(model, step=8)
    r = vacl.prune(copy.deepcopy(model), CIFAR, target_params_reduction=0.5,
                   latency_table=table, round_to="auto")
    assert r["round_to"] == 8
    for name, w in r["widths_after"].items():
        assert w % 8 == 0 or w == r["widths_before"][name], (name, w)


def test_latency_cost_keeps_widths_on_the_table_step_unless_round_to_is_given():
    """--cost latency without --round-to rounds to the table's step (auto reads 8 here);
    round_to=1 keeps exact widths, which this target leaves off the step."""
    model = _bn(create("resnet20", width=16))
    table = synthetic_table(model, step=8)
    r = vacl.prune(copy.deepcopy(model), CIFAR, target_params_reduction=0.5,
                   latency_table=table, cost="latency")
    assert r["round_to"] == 8 and r["target_reached"]
    for name, w in r["widths_after"].items():
        assert w % 8 == 0 or w == r["widths_before"][name], (name, w)
    exact = vacl.prune(copy.deepcopy(model), CIFAR, target_params_reduction=0.5,
                       latency_table=table, cost="latency", round_to=1)
    assert exact["round_to"] == 1
    assert any(w % 8 for w in exact["widths_after"].values())


@pytest.mark.parametrize("kw, message", [
    (dict(target_latency_reduction=0.3), "need a latency table"),
    (dict(target_latency=5.0), "need a latency table"),
    (dict(target_params_reduction=0.3, cost="latency"), "need a latency table"),
    (dict(target_params_reduction=0.3, round_to="auto"), "need a latency table"),
    (dict(threshold=0.1, cost="latency", latency_table=True), "cost='latency' ranks for a"),
    (dict(target_params_reduction=0.3, cost="time"), "unknown ranking cost 'time'"),
])
def test_bad_latency_options(kw, message):
    model = create("resnet8", width=4)
    if kw.get("latency_table") is True:
        kw["latency_table"] = synthetic_table(model)
    with pytest.raises(UserError, match=message):
        vacl.prune(model, CIFAR, **kw)


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
def test_measure_table_times_every_shape_once_and_caches(runtime, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime") if runtime == "onnxruntime" else None
    model = create("resnet8", width=4)
    table = measure_table(model, CIFAR, runtime, batch=2, repeats=1, cache_dir=tmp_path)
    shapes = {s.key(): s for s in conv_shapes(model, CIFAR).values()}
    assert set(table.curves) == set(shapes) and table.model_ms > 0
    for key, c in table.curves.items():
        assert c["out_points"] == grid(shapes[key].out_channels)
        assert c["out_ms"] == sorted(c["out_ms"]) and c["out_ms"][-1] == c["full_ms"] > 0
    files = list((tmp_path / "latency").glob(f"{runtime}-b2-*.json"))
    assert len(files) == 1

    def no_timing(*a, **k):
        raise AssertionError("a cached table was timed again")
    monkeypatch.setattr(lt, "_eager_timer", no_timing)
    monkeypatch.setattr(lt, "_ort_timer", no_timing)
    again = measure_table(model, CIFAR, runtime, batch=2, repeats=1, cache_dir=tmp_path)
    assert again.to_dict() == table.to_dict()
    with pytest.raises(UserError, match="unknown latency runtime 'tvm'"):
        measure_table(model, CIFAR, "tvm", cache_dir=tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="the cuda latency table needs a CUDA device"):
            measure_table(model, CIFAR, "cuda", cache_dir=tmp_path)


def test_a_model_with_fewer_layers_of_the_same_shapes_gets_its_own_table(tmp_path):
    """The table holds the whole model's time, so a net with a unit erased (the same conv
    shapes, fewer of them) must not reuse the full net's cached table."""
    from resprune.implosion.erase import set_submodule

    model = create("resnet14", width=4)
    measure_table(model, CIFAR, "eager", batch=2, repeats=1, cache_dir=tmp_path)
    set_submodule(model, "layer1.1", torch.nn.Identity())
    measure_table(model, CIFAR, "eager", batch=2, repeats=1, cache_dir=tmp_path)
    assert len(list((tmp_path / "latency").glob("eager-b2-*.json"))) == 2


def test_vacl_command_with_a_latency_target_keeps_its_table(trained, tmp_path, capsys,
                                                            monkeypatch):
    """The pipeline measures the table once, keeps it in the run and decides with it (the
    table is synthetic here: at batch 2 a tiny net's time is mostly not convolutions)."""
    calls = []

    def fake_measure(model, shape, runtime, batch):
        calls.append((runtime, batch))
        t = synthetic_table(model)
        t.batch = batch
        return t
    monkeypatch.setattr(lt, "measure_table", fake_measure)
    out = tmp_path / "v"
    args = ["vacl", str(trained), *QUIET, "--out", str(out), "--target-latency-reduction",
            "0.3", "--cost", "latency", "--latency-batch", "2", "--sparse-epochs", "0",
            "--finetune-epochs", "0", "--json"]
    assert main(args) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    # an RMS score per latency ranks by the cost alone: the command says so, once
    assert captured.err.count("use --group-score taylor") == 1
    assert "target predicted latency reduction 30.00 %" in vacl_cli.terminal_text(summary, out)
    pr = summary["prune"]
    assert pr["mode"] == "latency" and pr["cost"] == "latency" and pr["target_reached"]
    assert pr["latency"]["predicted_reduction"] >= 0.3
    assert pr["latency"]["runtime"] == "eager" and pr["latency"]["batch"] == 2
    kept = json.loads((out / "latency_table.json").read_text())
    assert kept["model_ms"] == pytest.approx(pr["latency"]["predicted_before_ms"])
    assert "predicted eager latency at batch 2" in (out / "report.md").read_text()
    assert calls == [("eager", 2)]


def test_vacl_command_with_a_macs_cost_needs_no_table(trained, tmp_path, capsys, monkeypatch):
    """--cost macs ranks for a MACs target without measuring anything, and an RMS score per
    MAC gets the same one-line warning as per millisecond."""
    monkeypatch.setattr(lt, "measure_table", lambda *a, **k: pytest.fail("table measured"))
    out = tmp_path / "v"
    args = ["vacl", str(trained), *QUIET, "--out", str(out), "--target-macs-reduction", "0.3",
            "--cost", "macs", "--sparse-epochs", "0", "--finetune-epochs", "0", "--json"]
    assert main(args) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert captured.err.count("--cost macs divides the group score by the MACs") == 1
    pr = json.loads(captured.out)["prune"]
    assert pr["mode"] == "macs" and pr["cost"] == "macs" and pr["target_reached"]
    assert pr["macs_reduction"] >= 0.3 and pr["latency"] is None
    assert not (out / "latency_table.json").exists()


@pytest.mark.parametrize("cost, first", [("none", "layer1.0"), ("latency", "layer3.1"),
                                         ("params", "layer3.1"), ("macs", "layer1.0")])
def test_implosion_cost_erases_the_costliest_unit_of_equal_priority(
        cost, first, tmp_path, monkeypatch):
    """All gates at 1 (equal priorities): by priority alone ties go in module order; per ms
    of a table where the last (16-channel) stage is 100x slower per channel, its unit goes
    first (the table is kept in the run); per param the widest stage's unit goes first; per
    MAC the erasable units tie (width doubles as the side halves) and module order decides.
    The params / MACs costs are the units' own counts."""
    from resprune.implosion import implode

    from .test_implosion import ScriptedEval, SGDTrainer, cfg, make_data, tiny

    monkeypatch.setattr(lt, "measure_table", lambda model, shape, runtime, batch:
                        synthetic_table(model, shape=shape, per_channel=lambda s: 0.1 if
                                        s.out_channels == 16 else 1e-3))
    model = tiny("resnet14")
    train, val = make_data()
    res = implode(model, train, val, cfg(cost=cost, adapt_epochs=0, retrain_epochs=0,
                                         max_steps=1, fold=False), tmp_path,
                  trainer_factory=SGDTrainer, evaluate_fn=ScriptedEval([0.5]), progress=False)
    assert res.erased == [first]
    assert (tmp_path / "latency_table.json").is_file() == (cost == "latency")
    if cost in ("params", "macs"):
        from resprune.implosion.candidates import unit_costs
        from resprune.implosion.gates import erasable_items
        from resprune.measure import count_macs

        fresh = tiny("resnet14")
        got = unit_costs(tmp_path, fresh, (3, 32, 32), cfg(cost=cost))
        units = dict(erasable_items(fresh))
        out = {}  # each unit's output shape (batch, width, height, width)
        hooks = [u.register_forward_hook(lambda m, i, o, n=n: out.update({n: o.shape}))
                 for n, u in units.items()]
        count_macs(fresh, (3, 32, 32))
        for h in hooks:
            h.remove()
        for name, unit in units.items():
            _, c, h, w = out[name]  # macs: 2 convs of 3x3, c -> c channels, at h x w
            want = (sum(p.numel() for n, p in unit.named_parameters() if "gate" not in n)
                    if cost == "params" else 2 * 9 * c * c * h * w)
            assert got[name] == want, (name, got[name], want)


def test_compress_latency_budget_is_the_whole_pipelines(tmp_path, monkeypatch):
    """compress with target_latency_reduction: the input's table time is the base, the vacl
    stage removes the share still missing after implosion (vacl_share on the tables' model
    times), and the budget is judged on the vacl stage's prediction."""
    import resprune
    from resprune.compression import CompressConfig, vacl_share
    from resprune.data import load_dataset, make_loaders
    from resprune.train import TrainConfig

    tables = []

    def fake_measure(model, shape, runtime, batch):
        tables.append(synthetic_table(model, shape=shape))
        return tables[-1]
    monkeypatch.setattr(lt, "measure_table", fake_measure)
    data = load_dataset("synthetic", val_fraction=0.1, seed=0)
    loaders = make_loaders(data, 32, seed=0)
    config = CompressConfig(target_latency_reduction=0.4, latency_batch=2, tolerance=100.0,
                            adapt_epochs=0, retrain_epochs=0, max_steps=1, sparse_epochs=0,
                            finetune_epochs=0, finetune_final_epochs=0,
                            train=TrainConfig(batch_size=32, device="cpu", seed=0))
    torch.manual_seed(0)
    model = _bn(create("resnet14", width=4))
    result = resprune.compress(model, loaders, config, out=tmp_path / "c", progress=False)
    b = result.summary["budget"]
    assert len(tables) == 2  # the input's (kept in the run) and the vacl stage input's
    base_ms, stage_ms = tables[0].model_ms, tables[1].model_ms
    assert stage_ms < base_ms  # implosion erased a unit first
    assert b["mode"] == "latency" and b["base_ms"] == pytest.approx(base_ms) and b["reached"]
    assert b["predicted_ms"] <= 0.6 * base_ms + 1e-9
    vacl_summary = json.loads((tmp_path / "c/stages/2-vacl/summary.json").read_text())
    assert vacl_summary["prune"]["target_reduction"] == pytest.approx(
        vacl_share(0.4, base_ms, stage_ms))
    assert (tmp_path / "c/latency_table.json").is_file()
    assert (tmp_path / "c/stages/2-vacl/latency_table.json").is_file()
