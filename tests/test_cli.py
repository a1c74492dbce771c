"""The command line: happy paths on synthetic data, and every bad input of the brief."""

import json
import os
import pickle
import subprocess
import sys

import pytest

from resprune.cli.main import main

TINY = ["--model", "resnet8", "--width", "4", "--data", "synthetic", "--batch-size", "32",
        "--no-progress"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run)]) == 0
    return run


def test_train_writes_a_complete_run(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"model.safetensors", "arch.json", "metrics.jsonl", "summary.json", "report.md",
            "train_state.pt", "command.json", "training.png"} <= names
    summary = json.loads((trained / "summary.json").read_text())
    for key in ("model", "params", "macs", "depth", "top1", "val_top1", "epochs", "seconds",
                "config", "input_shape"):
        assert key in summary, key
    assert summary["model"] == "resnet8" and summary["epochs"] == 2 and summary["depth"] == 8
    assert summary["config"]["epochs"] == 2
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2]


def test_json_output_is_one_object(trained, capsys):
    code, out, err = run_cli(["profile", trained, "--json", "--batch-sizes", "1", "4",
                              "--repeats", "2"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["params"] > 0 and set(result["latency"]) == {"1", "4"}
    code, out, _ = run_cli(["eval", trained, "--split", "val", "--json"], capsys)
    assert code == 0
    r = json.loads(out)
    summary = json.loads((trained / "summary.json").read_text())
    assert r["top1"] == pytest.approx(summary["val_top1"])  # same validation split reproduced


def test_config_file_and_flags_win(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: resnet8\nwidth: 4\ndata: synthetic\nepochs: 3\nbatch-size: 32\n"
                   "no_progress: true\nlr: 0.05\n")
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--config", cfg, "--epochs", "1", "--out", out], capsys)
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["epochs"] == 1 and s["config"]["lr"] == 0.05 and s["config"]["width"] == 4


@pytest.mark.parametrize("extra,msg", [
    (["--model", "resnet57"], "invalid choice: 'resnet57'"),
    (["--epochs", "-3"], "argument --epochs: must be an integer >= 0, got -3"),
    (["--lr", "nan"], "argument --lr: must be a number > 0, got nan"),
    (["--val-fraction", "1.5"], "argument --val-fraction: must be a number >= 0 and < 1, got 1.5"),
    (["--data", "cifar10", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
])
def test_bad_options_one_line_exit_2(tmp_path, capsys, extra, msg):
    code, out, err = run_cli(["train", *TINY, "--epochs", "1", "--out", tmp_path / "r", *extra],
                             capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("resprune: error: ") and msg in err
    assert "Traceback" not in err


def test_bad_config_files(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    code, _, err = run_cli(["train", "--config", bad], capsys)
    assert code == 2 and "not valid YAML" in err
    bad.write_text("epochs: 2\nlearning_rat: 0.1\n")
    code, _, err = run_cli(["train", "--config", bad], capsys)
    assert code == 2 and "unknown option 'learning_rat'" in err
    bad.write_text("epochs: many\n")
    code, _, err = run_cli(["train", "--config", bad], capsys)
    assert code == 2 and "'epochs'" in err


def test_existing_out_is_not_overwritten(trained, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--out", trained], capsys)
    assert code == 2 and "--overwrite" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before
    # a directory with foreign files is refused even with --overwrite
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--out", foreign, "--overwrite"],
                           capsys)
    assert code == 2 and "not a resprune run" in err
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_not_a_run_directory(tmp_path, capsys):
    for cmd in (["eval", tmp_path], ["profile", tmp_path], ["eval", tmp_path / "missing"]):
        code, _, err = run_cli(cmd, capsys)
        assert code == 2 and ("not a resprune run" in err or "does not exist" in err), err


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/resprune_cli_pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # hostile files on purpose
def test_malicious_and_corrupt_checkpoints(trained, tmp_path, capsys):
    import shutil
    marker = "/tmp/resprune_cli_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    run = tmp_path / "evil"
    shutil.copytree(trained, run)
    (run / "train_state.pt").write_bytes(pickle.dumps({"epoch": _Evil()}))
    code, _, err = run_cli(["train", *TINY, "--epochs", "3", "--out", run, "--resume"], capsys)
    assert code == 2 and "refusing to load" in err
    assert not os.path.exists(marker)
    (run / "model.safetensors").write_bytes(b"garbage")
    code, _, err = run_cli(["eval", run], capsys)
    assert code == 2 and "not a valid safetensors file" in err


def test_nan_loss_is_reported(tmp_path, capsys):
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--lr", "1e30",
                            "--out", tmp_path / "nan"], capsys)
    assert code == 2 and "NaN" in err and err.count("\n") == 1


def test_console_script_exit_status(tmp_path):
    r = subprocess.run([sys.executable, "-m", "resprune.cli.main", "eval", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("resprune: error:")
    r = subprocess.run([sys.executable, "-m", "resprune.cli.main", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout
    # python -m resprune: the form torchrun's -m launches
    r = subprocess.run([sys.executable, "-m", "resprune", "eval", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("resprune: error:")
    r = subprocess.run([sys.executable, "-m", "resprune", "--version"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.startswith("resprune ")


def test_export_cli(trained, tmp_path, capsys):
    target = tmp_path / "m.onnx"
    code, out, err = run_cli(["export", trained, "--out", target, "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["max_abs_diff"] <= 1e-4 and target.stat().st_size == info["bytes"]
    code, _, err = run_cli(["export", trained, "--out", tmp_path / "m.x", "--format", "tflite"],
                           capsys)
    assert code == 2 and "invalid choice: 'tflite'" in err and err.count("\n") == 1
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    code, _, err = run_cli(["export", trained, "--out", blocker / "m.onnx"], capsys)
    assert code == 2 and "is a file, not a directory" in err
    assert blocker.read_text() == "keep"


def test_train_init_finetunes_a_run(trained, tmp_path, capsys):
    import torch

    import resprune

    out = tmp_path / "ft"
    code, _, err = run_cli(["train", "--init", trained, "--data", "synthetic", "--epochs", "0",
                            "--batch-size", "32", "--no-progress", "--out", out], capsys)
    assert code == 0, err
    a, b = resprune.load(trained), resprune.load(out)
    assert resprune.spec_of(a) == resprune.spec_of(b)
    for (k, v), (k2, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, w), k
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "resnet8" and summary["epochs"] == 0
    assert summary["top1"] == json.loads((trained / "summary.json").read_text())["top1"]
    code, _, err = run_cli(["train", "--data", "synthetic", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "exactly one of --model" in err
    code, _, err = run_cli(["train", "--init", trained, "--data", "digits", "--out",
                            tmp_path / "y"], capsys)
    assert code == 2 and "expects 3-channel images but --data digits has 1-channel" in err


def test_train_arch_trains_a_spec_from_scratch(trained, tmp_path, capsys):
    import resprune

    spec = json.loads((trained / "arch.json").read_text())
    spec["stages"][0][0] = {"erased": True, "in": 4, "out": 4}  # a pruned architecture
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(spec))
    out = tmp_path / "scratch"
    code, _, err = run_cli(["train", "--arch", arch, "--data", "synthetic", "--epochs", "1",
                            "--batch-size", "32", "--no-progress", "--out", out], capsys)
    assert code == 0, err
    assert resprune.spec_of(resprune.load(out)) == spec
    assert json.loads((out / "summary.json").read_text())["depth"] == 6
    code, _, err = run_cli(["train", "--arch", arch, "--model", "resnet8", "--data", "synthetic",
                            "--out", tmp_path / "z"], capsys)
    assert code == 2 and "exactly one of" in err


def test_train_is_seeded(tmp_path, capsys):
    import torch

    import resprune

    runs = []
    for name in ("a", "b"):
        torch.manual_seed(1234 if name == "a" else 99)  # global state must not matter
        code, _, err = run_cli(["train", *TINY, "--epochs", "0", "--seed", "3",
                                "--out", tmp_path / name], capsys)
        assert code == 0, err
        runs.append(resprune.load(tmp_path / name).state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_demo_refuses_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run_cli(["demo", "--out", tmp_path], capsys)
    assert code == 2 and "not a demo directory" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resume_of_a_run_killed_in_its_first_write_starts_afresh(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".command.json.abc123.tmp").write_text('{"comm')  # all a first-write kill leaves
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--out", out, "--resume"], capsys)
    assert code == 0, err
    assert not list(out.glob(".*.tmp")) and (out / "summary.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--out", empty, "--resume"], capsys)
    assert code == 2 and "nothing to resume" in err


def test_resume_of_a_train_killed_before_its_first_epoch_ended(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--out", out], capsys)
    assert code == 0, err
    ref = (out / "model.safetensors").read_bytes()
    for name in ("train_state.pt", "summary.json", "model.safetensors", "arch.json",
                 "metrics.jsonl", "report.md", "training.png"):
        (out / name).unlink(missing_ok=True)  # as if killed right after command.json
    code, _, err = run_cli(["train", *TINY, "--epochs", "1", "--out", out, "--resume"], capsys)
    assert code == 0, err
    assert (out / "model.safetensors").read_bytes() == ref  # started over: the same run
