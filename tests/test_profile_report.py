"""``resprune profile --compare/--round-to`` and ``resprune report``: numbers, files, errors."""

import copy
import json
import math
import re

import pytest
import torch
from PIL import Image

import resprune
from resprune.cli.main import main
from resprune.export import pad_channels
from resprune.measure import compare as cmp
from resprune.measure import count_macs, count_params
from resprune.models import build, create, spec_of
from resprune.report.compare import collect, find_runs, pareto_front

SHAPE = [3, 16, 16]
FAST = ["--batch-sizes", "1", "3", "--warmup", "1", "--repeats", "2"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, msg):
    assert code == 2
    assert err.startswith("resprune: error: ") and err.count("\n") == 1, err
    assert msg in err, err


def pruned_spec(spec):
    """resnet8 width 4 with layer1.0 erased and stage 2 narrowed to 5 inner / 6 out channels."""
    s = copy.deepcopy(spec)
    s["stages"][0][0] = {"erased": True, "in": 4, "out": 4}
    u2 = s["stages"][1][0]
    u2["widths"], u2["out"] = [5], 6
    u2["shortcut"] = {"pad": [-1, 0, 1, 2, 3, -1]}
    u3 = s["stages"][2][0]
    u3["in"] = 6
    u3["shortcut"] = {"pad": [-1] * 5 + [0, 1, 2, 3, 4, 5] + [-1] * 5}
    return s


def write_run(path, model, shape=SHAPE, **summary):
    resprune.save(model, path)
    s = {"kind": "train", "model": spec_of(model)["arch"], "params": count_params(model),
         "macs": count_macs(model, shape), "depth": 8, "input_shape": list(shape),
         "top1": 0.5, "val_top1": 0.5, **summary}
    (path / "summary.json").write_text(json.dumps(s))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    base = create("resnet8", width=4)
    pruned = build(pruned_spec(spec_of(base)))
    return {"base": write_run(root / "base", base),
            "pruned": write_run(root / "pruned", pruned, kind="implode"),
            "big_input": write_run(root / "big", create("resnet8", width=4), shape=[3, 32, 32])}


# -- rounded widths -----------------------------------------------------------------------
def channel_counts(spec):
    counts = [spec["stem_width"]]
    for units in spec["stages"]:
        for u in units:
            counts += [u["in"], u["out"], *u.get("widths", [])]
    return counts


@pytest.mark.parametrize("n", [1, 3, 8])
def test_round_channels_multiples_and_valid_pad_maps(n):
    spec = pruned_spec(spec_of(create("resnet8", width=4)))
    r = cmp.round_channels(spec, n)
    assert all(c % n == 0 for c in channel_counts(r))
    assert all(rc >= c for rc, c in zip(channel_counts(r), channel_counts(spec)))
    assert r["in_channels"] == 3 and r["num_classes"] == 10  # fixed by the data
    if n == 1:
        assert r == spec
    # the original map stays on the first channels, added outputs are zero channels
    for units, old_units in zip(r["stages"], spec["stages"]):
        for u, old in zip(units, old_units):
            if isinstance(old.get("shortcut"), dict):
                pad = u["shortcut"]["pad"]
                assert pad[:old["out"]] == old["shortcut"]["pad"]
                assert pad[old["out"]:] == [-1] * (u["out"] - old["out"])
    net = build(r).eval()  # validate_spec accepts it and it runs
    assert net(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_round_channels_keeps_grouped_widths_divisible():
    spec = spec_of(create("resnext29", cardinality=2, base_width=4))
    r = cmp.round_channels(spec, 3)
    for units in r["stages"]:
        for u in units:
            assert all(w % 6 == 0 for w in u["widths"]) and u["out"] % 3 == 0
    assert build(r)(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_round_channels_rejects_bad_multiple():
    with pytest.raises(resprune.UserError, match="integer >= 1, got 0"):
        cmp.round_channels(spec_of(create("resnet8", width=4)), 0)


# -- timing and notes ---------------------------------------------------------------------
def test_interleaved_medians_alternates_order():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    ms = cmp.interleaved_medians(fns, warmup=1, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())


def test_notes_flag_overhead_bound_and_slower():
    assert cmp.note_for(1.1, 4.0, 1) == "overhead-bound at batch 1"
    assert cmp.note_for(1.9, 2.0, 64) == ""
    assert cmp.note_for(0.8, 2.0, 1) == "overhead-bound at batch 1; pruned is slower"
    assert cmp.note_for(0.9, 1.0, 1) == "pruned is slower"
    assert cmp.note_for(None, 2.0, 1) == ""
    result = {"macs_ratio": 4.0, "latency": [
        {"runtime": "eager", "device": "cpu", "batch": 1, "speedup": 1.1,
         "note": cmp.note_for(1.1, 4.0, 1)},
        {"runtime": "eager", "device": "cpu", "batch": 256, "speedup": 3.5,
         "note": cmp.note_for(3.5, 4.0, 256)}]}
    text = "\n".join(cmp.verdict(result))
    assert "best measured speed-up 3.50x (eager on cpu, batch 256)" in text
    assert "Overhead-bound" in text and "eager/cpu batch 1." in text


# -- profile --compare ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def compared(runs):
    """One full comparison: eager + onnxruntime, rounded variant (the slow path, run once)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["profile", str(runs["pruned"]), "--compare", str(runs["base"]),
                     "--round-to", "4", "--device", "cpu", "--json", *FAST])
    assert code == 0
    return json.loads(buf.getvalue())


def test_compare_sizes_and_exact_ratios(runs, compared):
    base, pruned = resprune.load(runs["base"]), resprune.load(runs["pruned"])
    assert compared["macs_ratio"] == count_macs(base, SHAPE) / count_macs(pruned, SHAPE)
    assert compared["params_ratio"] == count_params(base) / count_params(pruned)
    assert compared["base"]["params"] == count_params(base)
    assert compared["pruned"]["macs"] == count_macs(pruned, SHAPE)
    assert compared["base"]["run"] == str(runs["base"]) and compared["pruned"]["depth"] == 6
    assert compared["input_shape"] == SHAPE and compared["threads"] == 1
    rounded = pad_channels(pruned, 4)
    assert compared["rounded"] == {"round_to": 4, "params": count_params(rounded),
                                   "macs": count_macs(rounded, SHAPE), "depth": 6}
    assert all(c % 4 == 0 for c in channel_counts(spec_of(rounded)))


def test_compare_latency_rows_eager_and_onnxruntime(compared):
    rows = compared["latency"]
    assert [(r["runtime"], r["device"], r["batch"]) for r in rows] == [
        ("eager", "cpu", 1), ("eager", "cpu", 3), ("onnxruntime", "cpu", 1),
        ("onnxruntime", "cpu", 3)]
    for r in rows:
        assert r["base_ms"] > 0 and r["pruned_ms"] > 0 and r["rounded_ms"] > 0
    assert compared["skipped"] == []  # CPU only was asked for, onnxruntime is installed


def test_compare_maps_each_timing_to_its_model(runs, monkeypatch):
    """Speed-ups divide the base's time by the pruned model's (not the other way round, not
    another model's): with known timings per model the ratios and notes are exact."""
    known = {"base": 6.0, "pruned": 2.0, "rounded": 4.0}

    def fake_time_models(models, shape, batch_sizes, runtimes, devices, warmup, repeats):
        assert set(models) == set(known)
        assert models["base"] is base and models["pruned"] is pruned
        return [{"runtime": "eager", "device": "cpu", "batch": b,
                 "ms": {k: v * b for k, v in known.items()}} for b in batch_sizes], []

    base, pruned = resprune.load(runs["base"]), resprune.load(runs["pruned"])
    monkeypatch.setattr(cmp, "time_models", fake_time_models)
    res = cmp.compare(base, pruned, SHAPE, batch_sizes=(1, 8), round_to=4)
    assert [(r["batch"], r["base_ms"], r["pruned_ms"]) for r in res["latency"]] == [
        (1, 6.0, 2.0), (8, 48.0, 16.0)]
    assert [r["speedup"] for r in res["latency"]] == [3.0, 3.0]
    assert [r["rounded_speedup"] for r in res["latency"]] == [1.5, 1.5]
    macs_ratio = res["macs_ratio"]
    assert macs_ratio > 1
    for r in res["latency"]:  # a 3x speed-up is "overhead-bound" only below the threshold
        bound = 3.0 < cmp.OVERHEAD_FRACTION * macs_ratio
        assert ("overhead-bound" in r["note"]) == bound
        assert "pruned is slower" not in r["note"]
    slow = dict(known, pruned=12.0)  # the pruned model slower than the base
    monkeypatch.setattr(cmp, "time_models", lambda models, shape, b, *a: (
        [{"runtime": "eager", "device": "cpu", "batch": 1, "ms": dict(slow)}], []))
    res = cmp.compare(base, pruned, SHAPE, batch_sizes=(1,), round_to=4)
    assert res["latency"][0]["speedup"] == 0.5
    assert "pruned is slower" in res["latency"][0]["note"]


def test_compare_text_and_clean_skips(runs, capsys, monkeypatch):
    monkeypatch.setattr(cmp, "onnx_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli(["profile", runs["pruned"], "--compare", runs["base"], *FAST],
                             capsys)
    assert code == 0, err
    assert "MACs ratio" in out and "speed-up" in out and "eager" in out
    assert "skipped: eager on cuda: no CUDA device here" in out
    assert "skipped: onnxruntime: not installed" in out
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("eager ")]
    assert [ln[2] for ln in lines] == ["1", "3"]  # one row per batch size, CPU only


def test_profile_round_to_without_compare(runs, capsys):
    code, out, err = run_cli(["profile", runs["pruned"], "--round-to", "8", "--json", *FAST],
                             capsys)
    assert code == 0, err
    r = json.loads(out)
    assert set(r["latency"]) == set(r["rounded"]["latency_ms"]) == {"1", "3"}
    rounded = pad_channels(resprune.load(runs["pruned"]), 8)
    assert r["rounded"]["params"] == count_params(rounded)
    assert r["params"] == count_params(resprune.load(runs["pruned"]))


@pytest.mark.parametrize("extra,msg", [
    (["--round-to", "0"], "--round-to: must be an integer >= 1, got 0"),
    (["--compare", "/nonexistent/base"], "--compare /nonexistent/base is not a directory"),
    (["--runtimes", "tensorrt"], "invalid choice: 'tensorrt'"),
])
def test_compare_bad_options(runs, capsys, extra, msg):
    code, _, err = run_cli(["profile", runs["pruned"], *FAST, *extra], capsys)
    assert_one_line_error(code, err, msg)


def test_compare_refuses_non_run_and_other_input_shape(runs, tmp_path, capsys):
    code, _, err = run_cli(["profile", runs["pruned"], "--compare", tmp_path, *FAST], capsys)
    assert_one_line_error(code, err, f"--compare {tmp_path} is not a resprune run directory")
    code, _, err = run_cli(["profile", runs["pruned"], "--compare", runs["big_input"], *FAST],
                           capsys)
    assert_one_line_error(code, err, "takes inputs [3, 16, 16] but --compare")


# -- report ----------------------------------------------------------------------------------
def test_pareto_front_by_hand():
    pts = [(10, 0.90), (5, 0.85), (20, 0.95), (12, 0.89), (5, 0.80), (20, 0.95), (30, 0.94)]
    # (12, .89) is beaten by (10, .90); (5, .80) by (5, .85); (30, .94) by (20, .95);
    # the two identical (20, .95) points dominate neither each other
    assert pareto_front(pts) == [1, 0, 2, 5]
    assert pareto_front([]) == []
    assert pareto_front([(1, 0.5)]) == [0]


def summary(kind, params, macs, top1, **extra):
    return {"kind": kind, "model": "resnet20", "params": params, "macs": macs, "depth": 20,
            "val_top1": top1, "top1": top1, **extra}


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "exp"
    runs = {"base": summary("train", 1000, 10_000, 0.90),
            "small": summary("vacl", 400, 5_000, 0.89, base={"params": 1000, "macs": 10_000}),
            "worse": summary("vacl", 500, 6_000, 0.85, base={"params": 1000, "macs": 10_000}),
            "imploded": summary("implode", 900, 7_500, 0.91, params_removed_pct=10.0,
                                macs_removed_pct=25.0),
            "from-config": summary("vacl", 250, 2_500, None,
                                   config={"run": str(root / "base")})}
    for name, s in runs.items():
        (root / name).mkdir(parents=True)
        (root / name / "summary.json").write_text(json.dumps(s))
    (root / "unfinished").mkdir()
    (root / "unfinished" / "arch.json").write_text("{}")
    (root / "notes").mkdir()  # not a run at all: ignored silently
    return root


def test_collect_rows_removed_and_fronts(results):
    rows, skipped = collect([results])
    by = {r.label: r for r in rows}
    assert list(by) == ["base", "from-config", "imploded", "small", "worse"]
    assert skipped == [results / "unfinished"]
    assert by["base"].params_removed_pct is None  # a training run is the reference
    assert by["small"].params_removed_pct == pytest.approx(60.0)
    assert by["small"].macs_removed_pct == pytest.approx(50.0)
    assert by["imploded"].macs_removed_pct == 25.0  # the summary's own number
    assert by["from-config"].params_removed_pct == pytest.approx(75.0)  # via config.run
    assert by["from-config"].top1 is None


def test_report_cli_table_markdown_plot(results, tmp_path, capsys):
    out = tmp_path / "cmp" / "report.md"
    code, stdout, err = run_cli(["report", results, "--out", out], capsys)
    assert code == 0, err
    assert "skipped" in err and "unfinished" in err
    header = stdout.splitlines()[0].split()
    assert header[:3] == ["run", "kind", "model"] and "removed" in header
    line = next(ln for ln in stdout.splitlines() if ln.startswith("small "))
    assert "89.00 %" in line and "60.00 %" in line and "50.00 %" in line
    assert "vs params: small, imploded" in stdout  # imploded beats base on both
    md = out.read_text()
    assert "| small | vacl | resnet20 |" in md
    assert "![test top-1 vs params and MACs](report.png)" in md
    with Image.open(out.with_suffix(".png")) as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1] > 400  # two panels side by side


def test_report_json_and_explicit_plot(results, tmp_path, capsys):
    plot = tmp_path / "p.png"
    code, stdout, err = run_cli(["report", results / "base", results / "small",
                                 results / "base", "--plot", plot, "--json"], capsys)
    assert code == 0, err
    r = json.loads(stdout)
    assert [x["label"] for x in r["runs"]] == ["base", "small"]  # duplicates read once
    assert r["runs"][1]["top1"] == 0.89  # fractions in the JSON
    assert r["pareto"] == {"params": ["small", "base"], "macs": ["small", "base"]}
    assert r["plot"] == str(plot) and r["out"] is None and plot.stat().st_size > 0


def test_labels_disambiguate_same_names(tmp_path):
    for exp in ("a", "b"):
        (tmp_path / exp / "base").mkdir(parents=True)
        (tmp_path / exp / "base" / "summary.json").write_text(
            json.dumps(summary("train", 10, 10, 0.5)))
    rows, _ = collect([tmp_path / "a", tmp_path / "b"])
    assert [r.label for r in rows] == ["a/base", "b/base"]


def test_report_bad_input(results, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["report", empty], capsys)
    assert_one_line_error(code, err, f"{empty} has no summary.json, nor does any directory")
    code, _, err = run_cli(["report", results / "unfinished"], capsys)
    assert_one_line_error(code, err, "is not a finished resprune run (no summary.json)")
    code, _, err = run_cli(["report", tmp_path / "missing"], capsys)
    assert_one_line_error(code, err, "missing is not a directory")
    code, _, err = run_cli(["report", results, "--plot", tmp_path / "p.jpg"], capsys)
    assert_one_line_error(code, err, "--plot")
    assert not (tmp_path / "p.jpg").exists()
    bad = results / "percent"
    bad.mkdir()
    (bad / "summary.json").write_text(json.dumps(summary("train", 10, 10, 93.5)))
    code, _, err = run_cli(["report", bad], capsys)
    assert_one_line_error(code, err, "top1 must be a fraction in [0, 1], got 93.5")
    (bad / "summary.json").write_text("{not json")
    code, _, err = run_cli(["report", bad], capsys)
    assert_one_line_error(code, err, "is not valid JSON")
    with pytest.raises(resprune.UserError, match="no run directory given"):
        find_runs([])


def test_report_on_trained_run(tmp_path, capsys):
    run = tmp_path / "t"
    code, _, err = run_cli(["train", "--model", "resnet8", "--width", "4", "--data",
                            "synthetic", "--epochs", "1", "--batch-size", "64",
                            "--no-progress", "--out", run], capsys)
    assert code == 0, err
    code, out, err = run_cli(["report", run, "--json"], capsys)
    assert code == 0, err
    (row,) = json.loads(out)["runs"]
    s = json.loads((run / "summary.json").read_text())
    assert row["kind"] == "train" and row["params"] == s["params"] and row["depth"] == 8
    assert math.isclose(row["top1"], s["top1"])


def test_onnx_parity_tolerance_follows_output_scale():
    net = create("resnet8", width=4).eval()
    with torch.no_grad():
        net.fc.weight.mul_(0)
        net.fc.bias.fill_(0.5)
    assert cmp._parity_atol(net, tuple(SHAPE)) == 1e-4  # small outputs: the export default
    with torch.no_grad():
        net.fc.bias.fill_(-2000.0)
    assert cmp._parity_atol(net, tuple(SHAPE)) == pytest.approx(0.2)


@pytest.mark.parametrize("kwargs,msg", [
    ({"batch_sizes": [0]}, "batch sizes must be positive integers"),
    ({"repeats": 0}, "repeats must be an integer >= 1"),
    ({"runtimes": ["tvm"]}, "unknown runtime(s) ['tvm']"),
    ({"devices": ["tpu"]}, "unsupported device 'tpu'"),
])
def test_time_models_rejects_bad_arguments(kwargs, msg):
    with pytest.raises(resprune.UserError, match=re.escape(msg)):
        cmp.time_models({"m": create("resnet8", width=4)}, SHAPE, **kwargs)


def test_profile_layers_splits_the_pass_by_kind(runs, capsys):
    pytest.importorskip("onnxruntime")
    code, out, err = run_cli(["profile", runs["pruned"], "--compare", runs["base"],
                              "--layers", "4", "--warmup", "1", "--repeats", "2", "--json"],
                             capsys)
    assert code == 0, err
    r = json.loads(out)
    for name in ("base", "pruned"):
        prof = r[name]
        model = resprune.load(runs[name])
        # the per-kind MACs add up to count_macs for the whole batch of 4
        assert sum(prof["macs"].values()) == 4 * count_macs(model, SHAPE)
        assert prof["batch"] == 4 and set(prof["runtimes"]) == {"eager", "onnxruntime"}
        eager, ort = prof["runtimes"]["eager"], prof["runtimes"]["onnxruntime"]
        assert {"conv", "bn", "relu", "add"} <= set(eager["by_kind_ms"])
        assert all(v >= 0 for v in eager["by_kind_ms"].values())
        assert eager["total_ms"] > 0 and ort["total_ms"] > 0
        assert ort["by_kind_ms"]["conv"] > 0  # onnxruntime's conv kernels (fused or not)
        assert "BatchNormalization" not in ort["by_op_ms"]  # folded by the exporter
    code, out, err = run_cli(["profile", runs["base"], "--layers", "2", "--runtimes", "eager",
                              "--repeats", "1", "--warmup", "0"], capsys)
    assert code == 0 and "convolutions" in out and "whole pass" in out
