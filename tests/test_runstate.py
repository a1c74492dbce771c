"""One run-state mechanism: state.json (format, kind, atomic), old run directories, -q / -v,
and the VACL pipeline on loaders of the user's own."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import resprune
from resprune import UserError
from resprune.cli.main import main
from resprune.runstate import STATE_FILE, read_state, write_state
from resprune.train import Callback, TrainConfig
from resprune.vacl import VaclConfig
from resprune.vacl import pipeline as vacl_pipeline

from .conftest import QUIET

VACL = [*QUIET, "--sparse-epochs", "1", "--finetune-epochs", "1", "--lam", "1e-3",
        "--target-params-reduction", "0.4"]


def test_state_file_round_trip_and_checks(tmp_path):
    write_state(tmp_path, {"kind": "vacl", "phase": "prune"})
    assert json.loads((tmp_path / STATE_FILE).read_text()) == {
        "kind": "vacl", "phase": "prune", "format": 1}
    assert read_state(tmp_path, "vacl")["phase"] == "prune"
    with pytest.raises(UserError, match="holds a 'vacl' run, not a 'implode' run"):
        read_state(tmp_path, "implode")
    (tmp_path / STATE_FILE).write_text('{"format": 7, "kind": "vacl"}')
    with pytest.raises(UserError, match="not a run state this resprune can read .format 7."):
        read_state(tmp_path, "vacl")
    assert read_state(tmp_path / "nothing", "compress") is None
    with pytest.raises(ValueError):
        write_state(tmp_path, {"phase": "x"})  # a state names its kind


class Stop(Callback):
    def after_step(self, trainer):
        raise KeyboardInterrupt


def test_old_vacl_run_directory_resumes_from_its_legacy_state(trained, tmp_path, capsys,
                                                              monkeypatch):
    """A run killed under the old layout (pipeline_state.json) resumes and ends like an
    uninterrupted run; the state then lives in state.json."""
    ref = tmp_path / "ref"
    assert main(["vacl", str(trained), *VACL, "--out", str(ref)]) == 0
    out = tmp_path / "old"
    real = vacl_pipeline.Trainer

    def dying(*args, **kwargs):  # the fine-tuning dies at once
        if "loss_terms" not in kwargs or not kwargs["loss_terms"]:
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), Stop()]
        return real(*args, **kwargs)

    monkeypatch.setattr(vacl_pipeline, "Trainer", dying)
    assert main(["vacl", str(trained), *VACL, "--out", str(out)]) == 130
    monkeypatch.undo()
    state = json.loads((out / STATE_FILE).read_text())
    assert state["phase"] == "finetune"
    (out / STATE_FILE).rename(out / "pipeline_state.json")  # what resprune 0.1 wrote
    capsys.readouterr()
    assert main(["vacl", str(trained), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert not (out / "pipeline_state.json").exists()
    assert json.loads((out / STATE_FILE).read_text())["phase"] == "done"
    a, b = resprune.load(out).state_dict(), resprune.load(ref).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_quiet_and_verbose(trained, tmp_path, capsys):
    assert main(["vacl", str(trained), *VACL, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "vacl: pruning (target_params_reduction=0.4)" in err
    assert main(["vacl", str(trained), *VACL, "-q", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "vacl: " not in err and "sparsity training" not in err
    code = main(["vacl", str(trained), *VACL, "-q", "--lam", "-1", "--out",
                 str(tmp_path / "c")])
    assert code == 2 and "resprune: error: argument --lam" in capsys.readouterr().err


def test_run_vacl_on_own_loaders(tmp_path):
    """The library pipeline with plain DataLoaders (no DataBundle): a smaller model, a full
    run directory, the test loader only reported."""
    torch.manual_seed(0)
    x, y = torch.randn(96, 3, 16, 16), torch.randint(0, 4, (96,))
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(x[64:80], y[64:80]), batch_size=16)
    test = DataLoader(TensorDataset(x[80:], y[80:]), batch_size=16)
    model = resprune.create("resnet8", num_classes=4, width=4)
    before = sum(p.numel() for p in model.parameters())
    cfg = VaclConfig(target_params_reduction=0.3, sparse_epochs=1, finetune_epochs=1,
                     train=TrainConfig(device="cpu"))
    result = resprune.run_vacl(model, (train, val, test), cfg, out=tmp_path / "v",
                               progress=False)
    after = sum(p.numel() for p in result.model.parameters())
    assert after == result.summary["params"] <= 0.7 * before
    assert result.summary["input_shape"] == [3, 16, 16] and result.summary["data"] is None
    for name in ("model.safetensors", "arch.json", "summary.json", "metrics.jsonl",
                 "report.md", STATE_FILE):
        assert (tmp_path / "v" / name).is_file(), name
    with pytest.raises(UserError, match="give exactly one of --threshold"):
        VaclConfig().validate()
