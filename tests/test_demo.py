"""The demo's happy path, shortened (one training epoch): what `make demo` promises works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resprune.cli.main import main


def test_demo_fast_variant(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "1", "--no-progress", "--json", "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    base, small = r["base"], r["compressed"]
    assert base["kind"] == "train" and small["kind"] == "compress"
    assert small["params_removed_pct"] >= 60.0  # the demo's 60 % params budget is reached
    assert small["params"] < base["params"] and small["macs"] < base["macs"]
    assert Path(r["onnx"]).stat().st_size > 0 and Path(r["report"]).is_file()
    assert small["data"]["name"] == "digits" and 0 <= small["top1"] <= 1
    # the table's latencies are one interleaved timing of both models, and agree with it
    lat = {row["batch"]: row for row in r["latency"]["latency"]}
    assert set(lat) == {1, 64}
    for bs, row in lat.items():
        assert base["cpu_latency_ms"][str(bs)] == round(row["base_ms"], 4)
        assert small["cpu_latency_ms"][str(bs)] == round(row["pruned_ms"], 4)
        assert row["speedup"] == row["base_ms"] / row["pruned_ms"]
    # a second demo replaces the first; a foreign directory is refused with one line
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path / "mine")]) == 2
    assert "is not a demo directory" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
