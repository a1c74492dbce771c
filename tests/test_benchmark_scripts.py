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


def test_paired_compares_on_the_carved_validation_split_as_the_first_run_carved_it(
        tmp_path, monkeypatch, capsys):
    """--paired --split val: the per-image hits on the validation split carved with the first
    run's val_fraction and seed, the same figure evaluate() gives on that split."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    import resprune
    from resprune.data import load_dataset, make_loader
    from resprune.measure import evaluate
    from resprune.models import create

    bench = _load("cifar10_jpeg_resnet56", monkeypatch)
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 4)):
        for cls in ("a", "b"):
            (tmp_path / "img" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "img" / split / cls / f"{i}.png")
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        run = tmp_path / f"run{seed}"
        resprune.save(create("resnet8", num_classes=2, width=4), run)
        (run / "summary.json").write_text(json.dumps({"data": {"val_fraction": 0.4,
                                                               "seed": 3}}))
        runs.append(run)
    hits = bench.split_hits(runs, tmp_path / "img", "val")
    bundle = load_dataset("imagefolder", tmp_path / "img", val_fraction=0.4, seed=3,
                          preprocess=resprune.load(runs[0]).preprocess, progress=False)
    val = make_loader(bundle, "val", 500, train=False)
    assert len(hits[runs[1]]) == len(bundle.val) == 8
    for r in runs:
        top1 = evaluate(resprune.load(r), val)["top1"]
        assert float(hits[r].float().mean()) == pytest.approx(top1)
    assert bench.main(["--runs", str(tmp_path), "--data-dir", str(tmp_path / "img"), "--split",
                       "val", "--paired", *map(str, runs)]) == 0
    mean, se = bench.paired(hits[runs[1]], hits[runs[0]])
    assert capsys.readouterr().out.strip().endswith(
        f"val top-1 {100 * float(hits[runs[1]].float().mean()):.2f} %, minus {runs[0]}: "
        f"{mean:+.2f} ± {se:.2f} points")
