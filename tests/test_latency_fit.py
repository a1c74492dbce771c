"""Latency targets met on the measured model (``latency_check="measured"``)."""

from __future__ import annotations

import copy
import json

import pytest

from resprune import UserError, vacl
from resprune.cli.main import main
from resprune.measure import latency_table as lt
from resprune.measure.latency_table import conv_shapes
from resprune.models import create
from resprune.vacl import latency_fit
from resprune.vacl.latency_fit import GOAL_MAX, fit_goal

from .conftest import QUIET
from .test_latency_table import CIFAR, _bn, synthetic_table


def _scripted(measured):
    """pick/time_pick pair for which a goal g measures ``measured(g)`` (input 100 ms)."""
    def pick(goal):
        return [round(goal, 6)]

    def time_pick(chosen):
        return 100.0, 100.0 * (1 - measured(chosen[0]))
    return pick, time_pick


def test_a_table_that_overstates_the_saving_gets_a_higher_goal():
    pick, time_pick = _scripted(lambda g: 0.7 * g)
    chosen, info = fit_goal(pick, time_pick, lambda _ms: 0.5, 0.5)
    goals = [r["goal"] for r in info["rounds"]]
    # 0.5 measures 0.35; 0.5 * 0.5 / 0.35 = 0.7143 measures exactly 0.5: met, stop
    assert goals == pytest.approx([0.5, 0.5 / 0.7])
    assert info["reached"] and info["measured_reduction"] == pytest.approx(0.5)
    assert chosen == [round(0.5 / 0.7, 6)] and info["goal"] == pytest.approx(0.5 / 0.7)
    assert info["rounds"][0]["measured_reduction"] == pytest.approx(0.35)
    assert info["input_ms"] == 100.0 and info["pruned_ms"] == pytest.approx(50.0)


def test_a_table_that_understates_the_saving_gets_a_lower_goal():
    pick, time_pick = _scripted(lambda g: min(1.0, 1.5 * g))
    _, info = fit_goal(pick, time_pick, lambda _ms: 0.3, 0.3)
    assert [r["goal"] for r in info["rounds"]] == pytest.approx([0.3, 0.2])
    assert info["goal"] == pytest.approx(0.2) and info["measured_reduction"] == (
        pytest.approx(0.3))


def test_steps_are_bracketed_and_the_smallest_goal_that_meets_the_target_wins():
    # measured time falls in steps of 0.1 goal (runtimes compute in channel blocks)
    pick, time_pick = _scripted(lambda g: 0.8 * int(g * 10) / 10)
    _, info = fit_goal(pick, time_pick, lambda _ms: 0.45, 0.45, rounds=8)
    assert info["reached"] and info["measured_reduction"] >= 0.45
    met = [r["goal"] for r in info["rounds"] if r["measured_reduction"] >= 0.45]
    missed = [r["goal"] for r in info["rounds"] if r["measured_reduction"] < 0.45]
    assert info["goal"] == min(met) and missed and max(missed) < min(met)
    assert len(info["rounds"]) <= 8


def test_an_unreachable_target_returns_the_closest_and_says_so():
    pick, time_pick = _scripted(lambda g: 0.3 * g)
    chosen, info = fit_goal(pick, time_pick, lambda _ms: 0.5, 0.5)
    assert not info["reached"]
    assert info["goal"] == GOAL_MAX and chosen == [GOAL_MAX]
    assert info["measured_reduction"] == pytest.approx(0.3 * GOAL_MAX)
    assert len(info["rounds"]) == 2  # 0.5, then the cap; nothing higher to try


def test_a_fast_fluke_does_not_pass_a_candidate_that_misses():
    """Every candidate's first timing is 30 % fast (a quiet moment on a loaded machine); the
    true reduction of goal g is 0.5 g, so goals below 0.6 miss the 0.3 target: none of them
    may be accepted."""
    calls: dict[float, int] = {}

    def pick(goal):
        return [round(goal, 6)]

    def time_pick(chosen):
        g = chosen[0]
        calls[g] = calls.get(g, 0) + 1
        return 100.0, 100.0 * (1 - 0.5 * g) * (0.7 if calls[g] == 1 else 1.0)
    chosen, info = fit_goal(pick, time_pick, lambda _ms: 0.3, 0.3)
    first = info["rounds"][0]  # 0.3: 0.405 at first (the fluke), 0.15 re-timed: missed
    assert [t["measured_reduction"] for t in first["timings"]] == pytest.approx([0.405, 0.15])
    assert first["measured_reduction"] == pytest.approx(0.15)
    assert info["reached"] and chosen == [0.6] and info["goal"] == pytest.approx(0.6)
    assert info["measured_reduction"] == pytest.approx(0.3)
    # without confirm the fluke passes every goal: the chosen model misses the target
    _, blind = fit_goal(pick, lambda c: (100.0, 70.0 * (1 - 0.5 * c[0])), lambda _ms: 0.3,
                        0.3, confirm=False)
    assert blind["reached"] and 0.5 * blind["goal"] < 0.3
    assert all(len(r["timings"]) == 1 for r in blind["rounds"])


def test_an_absolute_target_is_read_against_the_measured_input():
    pick, time_pick = _scripted(lambda g: 0.5 * g)  # input always 100 ms
    _, info = fit_goal(pick, time_pick, lambda base_ms: 1 - 80.0 / base_ms, 0.1)
    assert info["reached"] and info["pruned_ms"] <= 80.0 + 1e-9
    assert all(r["target_reduction"] == pytest.approx(0.2) for r in info["rounds"])


def _true_ms(table, full, model, offset):
    """A runtime whose time is the table's convs at ``model``'s widths (``full``: the
    unpruned model) plus ``offset`` ms the table does not see (additions, ReLUs, memory
    traffic)."""
    shapes = conv_shapes(full, CIFAR)
    return offset + sum(table.conv_ms(shapes[n], s.in_channels, s.out_channels)
                        for n, s in conv_shapes(model, CIFAR).items())


def test_prune_meets_the_target_on_the_timer_not_on_the_table():
    model = _bn(create("resnet20", width=16))
    table = synthetic_table(model)
    offset = 0.5 * table.model_ms  # a third of the real time is outside the convolutions
    calls = []

    def timer(base, candidate):
        calls.append(1)
        assert base is pruned  # the input is timed as it is, the candidate is a copy
        return _true_ms(table, model, base, offset), _true_ms(table, model, candidate, offset)

    plain = vacl.prune(copy.deepcopy(model), CIFAR, target_latency_reduction=0.3,
                       latency_table=table)
    pruned = copy.deepcopy(model)
    r = vacl.prune(pruned, CIFAR, target_latency_reduction=0.3, latency_table=table,
                   latency_check="measured", latency_timer=timer)
    lat = r["latency"]
    true_after = _true_ms(table, model, pruned, offset)
    true_before = _true_ms(table, model, model, offset)
    # the table's selection saves 30 % of the table's time, only 20 % of the real time
    assert plain["latency"]["check"] == "table"
    assert plain["latency"]["predicted_reduction"] >= 0.3
    assert r["target_reached"] and lat["check"] == "measured"
    assert lat["measured_reduction"] == pytest.approx(1 - true_after / true_before)
    assert 0.3 <= lat["measured_reduction"] <= 0.3 + latency_fit.TOLERANCE + 0.01
    assert lat["predicted_reduction"] > 0.4 and lat["goal"] > 0.4
    assert r["groups_removed"] > plain["groups_removed"]
    assert sum(len(r["timings"]) for r in lat["rounds"]) == len(calls)
    assert len(lat["rounds"]) >= 2 and len(lat["rounds"][-1]["timings"]) == 2  # confirmed
    assert lat["rounds"][0]["goal"] == 0.3 and lat["rounds"][0]["measured_reduction"] < 0.3


@pytest.mark.parametrize("kw, message", [
    (dict(target_params_reduction=0.3, latency_check="measured"),
     "latency_check='measured' checks a latency target"),
    (dict(target_latency_reduction=0.3, latency_check="timed"), "unknown latency check 'timed'"),
])
def test_bad_latency_check(kw, message):
    model = create("resnet8", width=4)
    with pytest.raises(UserError, match=message):
        vacl.prune(model, CIFAR, latency_table=synthetic_table(model), **kw)


def test_the_default_timer_times_both_models_in_the_tables_runtime(monkeypatch):
    from resprune.measure import compare

    prepared = []
    real = compare.prepare

    def counting(model, shape, runtime, device="cpu"):
        prepared.append((runtime, device))
        return real(model, shape, runtime, device)
    monkeypatch.setattr(compare, "prepare", counting)
    model = _bn(create("resnet8", width=8)).eval()
    table = synthetic_table(model)
    table.batch = 2
    r = vacl.prune(copy.deepcopy(model), CIFAR, target_latency_reduction=0.3,
                   latency_table=table, latency_check="measured")
    # the input is prepared once, each candidate once per timing, all in the table's runtime
    timings = sum(len(row["timings"]) for row in r["latency"]["rounds"])
    assert prepared == [("eager", "cpu")] * (timings + 1)
    for row in r["latency"]["rounds"]:
        assert row["input_ms"] > 0 and row["pruned_ms"] > 0
        assert row["measured_reduction"] == pytest.approx(1 - row["pruned_ms"] / row["input_ms"])


def test_vacl_command_latency_check_measured(trained, tmp_path, capsys, monkeypatch):
    def fake_measure(model, shape, runtime, batch):
        t = synthetic_table(model)
        t.batch = batch
        return t

    def fake_timer(table, shape, repeats=latency_fit.REPEATS):
        def timer(base, pruned):  # 40 % of the real time is outside the convolutions
            offset = 0.4 / 0.6 * table.model_ms
            return (_true_ms(table, base, base, offset),
                    _true_ms(table, base, pruned, offset))
        return timer
    monkeypatch.setattr(lt, "measure_table", fake_measure)
    monkeypatch.setattr(latency_fit, "model_timer", fake_timer)
    out = tmp_path / "v"
    args = ["vacl", str(trained), *QUIET, "--out", str(out), "--target-latency-reduction",
            "0.25", "--latency-check", "measured", "--latency-batch", "2", "--sparse-epochs",
            "0", "--finetune-epochs", "0", "--json"]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    lat = summary["prune"]["latency"]
    assert lat["check"] == "measured" and summary["prune"]["target_reached"]
    assert lat["measured_reduction"] >= 0.25 and lat["predicted_reduction"] > 0.3
    assert summary["config"]["latency_check"] == "measured"
    text = (out / "report.md").read_text()
    assert "the latency measured against the input fell by at least 25.00 %" in text


def test_vacl_command_refuses_measured_without_a_latency_target(trained, tmp_path, capsys):
    out = tmp_path / "v"
    code = main(["vacl", str(trained), *QUIET, "--out", str(out), "--target-params-reduction",
                 "0.3", "--latency-check", "measured", "--sparse-epochs", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--latency-check measured checks a latency target" in err
    assert "Traceback" not in err and not out.exists()


def test_compress_latency_budget_checked_on_the_measured_vacl_stage(tmp_path, monkeypatch):
    """compress passes latency_check to its vacl stage; the budget is then judged on what
    that stage measured, and the report says so."""
    import resprune
    from resprune.compression import CompressConfig
    from resprune.data import load_dataset, make_loaders
    from resprune.train import TrainConfig

    def fake_measure(model, shape, runtime, batch):
        return synthetic_table(model, shape=shape)

    def fake_timer(table, shape, repeats=latency_fit.REPEATS):
        def timer(base, pruned):  # half of the real time is outside the convolutions
            return (_true_ms(table, base, base, table.model_ms),
                    _true_ms(table, base, pruned, table.model_ms))
        return timer
    monkeypatch.setattr(lt, "measure_table", fake_measure)
    monkeypatch.setattr(latency_fit, "model_timer", fake_timer)
    loaders = make_loaders(load_dataset("synthetic", val_fraction=0.1, seed=0), 32, seed=0)
    config = CompressConfig(stages=("vacl",), target_latency_reduction=0.2, latency_batch=2,
                            latency_check="measured", sparse_epochs=0, finetune_epochs=0,
                            train=TrainConfig(batch_size=32, device="cpu", seed=0))
    model = _bn(create("resnet14", width=4))
    result = resprune.compress(model, loaders, config, out=tmp_path / "c", progress=False)
    b = result.summary["budget"]
    lat = json.loads((tmp_path / "c/stages/1-vacl/summary.json").read_text())["prune"][
        "latency"]
    assert lat["check"] == "measured" and lat["measured_reduction"] >= 0.2
    assert lat["predicted_reduction"] > 0.3  # the table alone would have stopped early
    assert b["check"] == "measured" and b["reached"]
    assert b["measured_ms"] == lat["pruned_ms"] and b["vacl_input_ms"] == lat["input_ms"]
    assert "met its share on the measured model" in (tmp_path / "c/report.md").read_text()
    with pytest.raises(UserError, match="--latency-check measured checks a latency target"):
        CompressConfig(target_params_reduction=0.5, latency_check="measured").validate()
