"""Every benchmark script imports cleanly against the current library.

The scripts run for hours on other machines; an import error found there (a helper moved in
the library) costs a whole run. Loading each module executes its top-level imports without
running ``main``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py"))


def _load(name: str, monkeypatch):
    """Import ``benchmarks/NAME.py`` (its directory on the path, as when it runs)."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_imports(path: Path, monkeypatch):
    module = _load(path.stem, monkeypatch)
    if path.name != "_common.py":
        assert callable(getattr(module, "main", None)), f"{path.name} has no main()"


def test_gpu_row_resumes_on_the_cpu(tmp_path, monkeypatch):
    """A GPU row's command asks for cuda; --device cpu appends the override after it (the
    last --device wins), and a started run directory gets --resume."""
    bench = _load("cifar10_jpeg_resnet56", monkeypatch)
    row = "gpu-r56-compress-oneshot-r2-full"
    fresh = bench.row_argv(row, tmp_path)
    assert fresh[fresh.index("--device") + 1] == "cuda"
    assert fresh[fresh.index("--epoch-size") + 1] == "45000"
    assert fresh[-2:] == [str(tmp_path / row), "--no-progress"]
    (tmp_path / row).mkdir()
    (tmp_path / row / "state.json").write_text("{}")
    resumed = bench.row_argv(row, tmp_path, device="cpu")
    assert resumed[-4:] == ["--no-progress", "--resume", "--device", "cpu"]
    assert resumed.count("--device") == 2
    tp = bench.row_argv("gpu-r56-tp-groupnorm-oneshot-r2-full", tmp_path, threads=2,
                        device="cpu")
    assert tp[1] == "benchmarks/_tp_baselines.py"
    assert tp[tp.index("--params-reduction") + 1] == bench.MACS_3N
    assert tp[-6:] == ["--out", str(tmp_path / "gpu-r56-tp-groupnorm-oneshot-r2-full"),
                       "--threads", "2", "--device", "cpu"]
    s1 = bench.row_argv("gpu-r56-vacl-450k-full-s1", tmp_path)
    assert s1[:-3] == [*bench.row_argv("gpu-r56-vacl-450k-full", tmp_path)[:-3], "--seed", "1"]
    s1 = bench.row_argv("r56-vacl-taylor-450k-s1", tmp_path)
    assert s1[:-3] == [*bench.row_argv("r56-vacl-taylor-450k", tmp_path)[:-3], "--seed", "1"]
    at = bench.row_argv("r56-vacl-taylor-450k-at", tmp_path)
    assert at[:-3] == [*bench.row_argv("r56-vacl-taylor-450k", tmp_path)[:-3],
                       "--distill-attention", "1000"]
    feat = bench.row_argv("r56-vacl-taylor-450k-feat10", tmp_path)
    assert feat[:-3] == [*bench.row_argv("r56-vacl-taylor-450k", tmp_path)[:-3],
                         "--distill-features", "10"]
    probe = bench.row_argv("r56-vacl-taylor-100k", tmp_path)[:-3]
    for row, extra in (("-costparams", ["--cost", "params"]), ("-costmacs", ["--cost", "macs"]),
                       ("-feat2", ["--distill-features", "2"]),
                       ("-feat10", ["--distill-features", "10"])):
        assert bench.row_argv(f"r56-vacl-taylor-100k{row}", tmp_path)[:-3] == [*probe, *extra]


def test_regularizer_overhead_times_torch_pruning_beside_vacl(monkeypatch, capsys):
    """The regularizer benchmark's other sides (VACL backpropagated as a loss term,
    torch-pruning's GroupNormPruner) run on the CPU and report their ratio, their term alone
    and the ops it dispatches (VACL's fused gradient far fewer than its loss-term form);
    syncs are only counted on CUDA."""
    bench = _load("vacl_regularizer_overhead", monkeypatch)
    import torch

    assert bench.main(["--model", "resnet20", "--rounds", "2", "--batch-size", "4",
                       "--threads", "1", "--loss-term", "--torch-pruning"]) == 0
    out = capsys.readouterr().out
    assert out.count("median per-round ratio") == 3
    assert "step with torch-pruning:" in out and "step with VACL:" in out
    assert "step with VACL as a loss term:" in out
    assert "dependency groups" in out
    assert out.count("host-device syncs per call: n/a (CPU)") == 3
    ops = [int(n) for n in re.findall(r"ops dispatched per call: (\d+)", out)]
    assert len(ops) == 3 and 0 < 2 * ops[0] < ops[1]  # fused VACL, then as a loss term
    assert bench.syncs(lambda: None, torch.device("cpu")) is None
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            bench.main(["--device", "cuda"])
        assert e.value.code == 2
        assert "no CUDA device here" in capsys.readouterr().err
