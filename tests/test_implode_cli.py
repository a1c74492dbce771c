"""``resprune implode``: the command end to end on synthetic data, resume, and bad input."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from PIL import Image

import resprune
from resprune.cli.main import main
from resprune.implosion import loop as loop_mod
from resprune.measure import count_params, depth
from resprune.train import Callback, Trainer

ERASABLE = {"layer1.0", "layer1.1", "layer2.1", "layer3.1"}  # resnet14: 2 basic blocks/stage
QUIET = ["--batch-size", "32", "--no-progress"]
# every step accepted (a tolerance of 100 points), 1-epoch retrainings: fast and predictable
FAST = [*QUIET, "--tolerance", "100", "--retrain-epochs", "1", "--adapt-epochs", "1"]
REFERENCE = [*FAST, "--max-steps", "2", "--final-epochs", "1"]




def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def train_run(path, *extra) -> None:
    assert main(["train", "--model", "resnet14", "--width", "4", "--data", "synthetic",
                 "--epochs", "1", *QUIET, "--out", str(path), *extra]) == 0


def read_summary(run):
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("base") / "resnet14"
    train_run(run)
    return run


@pytest.fixture(scope="module")
def imploded(trained, tmp_path_factory):
    """The reference run: two accepted steps and a final retrain, printed with --json."""
    out = tmp_path_factory.mktemp("imp") / "run"
    capsys_out = tmp_path_factory.mktemp("stdout") / "stdout.txt"
    with open(capsys_out, "w") as f, contextlib.redirect_stdout(f):
        code = main(["implode", str(trained), *REFERENCE, "--json", "--out", str(out)])
    assert code == 0
    return out, capsys_out.read_text()


def unit_params(model, name: str) -> int:
    return sum(p.numel() for p in model.get_submodule(name).parameters())


# -- the happy path -------------------------------------------------------------------------

def test_implode_writes_a_smaller_loadable_model(trained, imploded):
    out, stdout = imploded
    summary = read_summary(out)
    assert stdout.count("\n") == 1 and json.loads(stdout) == summary  # --json: one object
    base_model, model = resprune.load(trained), resprune.load(out)
    assert summary["kind"] == "implode" and summary["model"] == "resnet14"
    # two steps of one unit each, none rolled back; downsampling units never erased
    names = [e["name"] for e in summary["erased_units"]]
    assert len(names) == 2 and set(names) <= ERASABLE
    assert summary["stop_reason"] == "max_steps"
    assert [h["erased"] for h in summary["steps"]] == [[n] for n in names]
    assert [e["priority"] for e in summary["erased_units"]] == [
        h["priorities"][n] for h, n in zip(summary["steps"], names)]
    assert [e["step"] for e in summary["erased_units"]] == [1, 2]
    # seconds: the whole run, at least every training it did (a command once recorded only
    # its set-up time here)
    trained_s = sum(json.loads(line)["seconds"] for f in (out / "steps").glob("*/train/*.jsonl")
                    for line in f.read_text().splitlines())
    assert trained_s > 0 and summary["seconds"] >= trained_s
    # the saved model is the smaller net, gates folded away, and loads alone
    assert not any(n.endswith("gate") for n, _ in model.named_parameters())
    assert all(isinstance(model.get_submodule(n), torch.nn.Identity) for n in names)
    stages = resprune.spec_of(model)["stages"]
    assert sum(u.get("erased", False) for st in stages for u in st) == 2
    assert count_params(model) == summary["params"] == (
        count_params(base_model) - sum(unit_params(base_model, n) for n in names))
    assert depth(model) == summary["depth"] == 14 - 2 * len(names)  # basic block: 2 layers
    # the base is the input model, measured on the same splits the input run used
    base = summary["base"]
    assert base["params"] == count_params(base_model) and base["depth"] == 14
    assert base["val_top1"] == pytest.approx(read_summary(trained)["val_top1"])
    assert base["top1"] == pytest.approx(read_summary(trained)["top1"])
    assert summary["data"] == read_summary(trained)["data"]
    assert summary["layers_removed_pct"] == pytest.approx(100 * (14 - summary["depth"]) / 14)
    assert summary["params_removed_pct"] == pytest.approx(
        100 * (base["params"] - summary["params"]) / base["params"])
    assert summary["macs_removed_pct"] == pytest.approx(
        100 * (base["macs"] - summary["macs"]) / base["macs"])
    assert 0 < summary["macs"] < base["macs"]
    # epochs: 1 adapting the 4 new gates + 2 retrainings of 1 + 1 final
    assert summary["epochs_detail"] == {"adapt": 1, "retrain": 2, "final": 1}
    assert summary["epochs"] == 4 and summary["start"]["gates_added"] == 4
    for key in ("top1", "val_top1", "seconds", "input_shape", "config", "cpu_latency_ms"):
        assert key in summary, key
    assert summary["config"]["tolerance"] == 100.0 and summary["config"]["retrain_lr"] == 0.01
    assert all(h["cpu_latency_ms_64"] > 0 for h in summary["steps"])
    assert [u["name"] for u in summary["units"]] == [
        "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]
    assert {u["name"] for u in summary["units"] if u["erasable"]} == ERASABLE


def test_report_and_plots(imploded, capsys):
    out, _ = imploded
    summary = read_summary(out)
    report = (out / "report.md").read_text()
    assert "![unit priorities](priorities.png)" in report
    assert "![validation accuracy vs depth](accuracy_vs_depth.png)" in report
    for h in summary["steps"]:  # one table row per step, accuracy in percent
        assert f"| {h['step']} | {h['erased'][0]} | " in report
        assert f"{100 * h['val_top1']:.2f} % | yes |" in report
    assert "| 0 (start) |" in report
    for png in ("priorities.png", "accuracy_vs_depth.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
    # the saved model's own validation accuracy is the summary's (same split reproduced)
    code, stdout, err = run_cli(["eval", out, "--split", "val", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["top1"] == pytest.approx(summary["val_top1"])


@pytest.mark.parametrize("extra,steps,reason,depth_", [
    # nothing left: the 4 identity-shortcut units go, the two downsampling ones stay
    (["--per-step", "3"], [3, 1], "nothing_erasable", 6),
    # a step erases no more units than the target needs
    (["--per-step", "3", "--target-depth", "10"], [2], "target_depth", 10),
])
def test_erases_only_identity_units_and_stops(trained, tmp_path, capsys, extra, steps, reason,
                                              depth_):
    cfg = tmp_path / "implode.yaml"  # options from a config file; flags win
    cfg.write_text("retrain-epochs: 0\nadapt_epochs: 0\ntolerance: 100\nper-step: 1\n")
    out = tmp_path / "run"
    args = ["implode", trained, "--config", cfg, *QUIET, *extra, "--out", out]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    s = read_summary(out)
    assert [len(h["erased"]) for h in s["steps"]] == steps
    assert s["stop_reason"] == reason and s["depth"] == depth_ == depth(resprune.load(out))
    names = [e["name"] for e in s["erased_units"]]
    assert set(names) <= ERASABLE and not {"layer2.0", "layer3.0"} & set(names)
    assert s["layers_removed_pct"] == pytest.approx(100 * (14 - depth_) / 14)
    assert s["epochs"] == 0 and s["config"]["per_step"] == 3
    assert "erased" in stdout and "weight layers removed" in stdout
    # --overwrite replaces a finished implode run
    code, _, err = run_cli([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert [e["name"] for e in read_summary(out)["erased_units"]] == names


def test_gated_input_skips_adaptation(tmp_path, capsys):
    """A run trained with --priority-gates: no gates added, step 1 erases the lowest |w|."""
    base = tmp_path / "gated"
    train_run(base, "--priority-gates")
    gates = {n: abs(float(m.gate.detach())) for n, m in resprune.load(base).named_modules()
             if getattr(m, "gate", None) is not None}
    assert set(gates) == ERASABLE
    out = tmp_path / "imp"
    code, _, err = run_cli(["implode", base, *QUIET, "--retrain-epochs", "0",
                            "--max-steps", "1", "--tolerance", "100", "--out", out], capsys)
    assert code == 0, err
    s = read_summary(out)
    assert s["start"]["gates_added"] == 0 and s["epochs_detail"]["adapt"] == 0
    low = min(gates, key=gates.get)
    assert s["erased_units"] == [{"name": low, "priority": pytest.approx(gates[low]),
                                  "step": 1}]
    assert set(s["gates"]) == ERASABLE - {low}  # survivors, folded into their BNs


# -- resume -----------------------------------------------------------------------------------

class Interrupt(Callback):
    def after_step(self, trainer):
        if trainer.global_step == 3:
            raise KeyboardInterrupt


def test_resume_after_interrupt_matches_uninterrupted_run(trained, imploded, tmp_path,
                                                          monkeypatch, capsys):
    ref_out, _ = imploded
    calls = {"n": 0}

    def dying_trainer(*args, **kwargs):  # trainings: adapt, step 1, step 2 (interrupted)
        calls["n"] += 1
        extra = [Interrupt()] if calls["n"] == 3 else []
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + extra
        return Trainer(*args, **kwargs)

    monkeypatch.setattr(loop_mod, "Trainer", dying_trainer)
    out = tmp_path / "run"
    code, _, err = run_cli(["implode", trained, *REFERENCE, "--out", out], capsys)
    assert code == 130 and "rerun the same command with --resume" in err
    assert calls["n"] == 3 and not (out / "summary.json").exists()
    monkeypatch.undo()
    # without --resume the half-finished run is protected
    code, _, err = run_cli(["implode", trained, *REFERENCE, "--out", out], capsys)
    assert code == 2 and "pass --overwrite to replace the run in it or --resume" in err
    # resume with no options at all: the saved ones are reused
    code, _, err = run_cli(["implode", trained, "--out", out, "--resume", "--no-progress"],
                           capsys)
    assert code == 0, err
    ref, got = read_summary(ref_out), read_summary(out)
    drop = ("seconds", "cpu_latency_ms_64")
    assert [{k: v for k, v in h.items() if k not in drop} for h in got["steps"]] == [
        {k: v for k, v in h.items() if k not in drop} for h in ref["steps"]]
    for key in ("erased_units", "params", "macs", "depth", "top1", "val_top1", "epochs",
                "stop_reason", "gates", "layers_removed_pct"):
        assert got[key] == ref[key], key
    assert got["config"] == {**ref["config"], "out": str(out), "json": False, "resume": True}
    a, b = resprune.load(out).state_dict(), resprune.load(ref_out).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,msg", [
    (["--tolerance", "-1"], "argument --tolerance: must be a number >= 0, got -1"),
    (["--per-step", "0"], "argument --per-step: must be an integer >= 1, got 0"),
    (["--target-depth", "20"], "--target-depth 20 is above the depth of "),
    (["--score", "l2"], "argument --score: invalid choice: 'l2'"),
    (["--retrain-lr", "0"], "argument --retrain-lr: must be a number > 0, got 0"),
    (["--max-steps", "0"], "argument --max-steps: must be an integer >= 1, got 0"),
    (["--warmup-epochs", "1"], "--warmup-epochs does not apply to implode"),
    (["--data", "digits"], "--data digits has 10 classes of 1-channel images but the model"),
    (["--val-fraction", "0"], "the validation split is empty (--val-fraction 0.0)"),
    (["--lr", "0.1"], "unrecognized arguments: --lr 0.1"),
    (["--resume", "--overwrite"], "--overwrite and --resume contradict each other"),
    (["--resume"], "nothing to resume in"),
    (["--screen-cost", "params"], "screen_cost params ranks the screened candidates: give "
                                  "screen >= 1 (--screen N)"),
    (["--screen", "2", "--screen-cost", "flops"], "argument --screen-cost: invalid choice"),
    (["--screen-rounds", "2"], "screen_rounds 2 screens in rounds: give screen >= 1 "
                               "(--screen N)"),
    (["--screen", "2", "--screen-rounds", "0"], "argument --screen-rounds: must be an integer "
                                                ">= 1, got 0"),
])
def test_bad_options_one_line_exit_2(trained, tmp_path, capsys, extra, msg):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["implode", trained, *QUIET, "--out", out, *extra], capsys)
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("resprune: error: ") and msg in err, err
    assert not out.exists()  # nothing written


def test_refuses_a_run_of_another_kind(trained, tmp_path, capsys):
    export = tmp_path / "model.onnx"
    export.write_bytes(b"\x08\x07onnx-ish")
    (tmp_path / "empty").mkdir()
    (tmp_path / "demo" / "base").mkdir(parents=True)  # e.g. a 'resprune demo' folder
    cases = [(export, f"RUN {export} is a file, not a run directory"),
             (tmp_path / "empty", "is not a resprune run directory (no arch.json)"),
             (tmp_path / "demo", "is not a resprune run directory (no arch.json)"),
             (tmp_path / "missing", f"run directory {tmp_path / 'missing'} does not exist")]
    for run, msg in cases:
        code, _, err = run_cli(["implode", run, "--data", "synthetic", "--out",
                                tmp_path / "out"], capsys)
        assert code == 2 and err.count("\n") == 1 and msg in err, err
    code, _, err = run_cli(["implode", trained, "--out", trained], capsys)
    assert code == 2 and "is the input run; write the result to a new directory" in err
    assert not (tmp_path / "out").exists()


def test_report_says_how_steps_were_chosen_scored_and_accepted():
    from resprune.report.implosion import steps_note

    plain = steps_note({"retrain": "always"}, 0.9)
    assert plain == ("Each step erases the lowest-priority unit(s), retrains, and is accepted "
                     "when validation top-1 >= 90.00 % (the start net's) minus the tolerance; "
                     "otherwise the step is rolled back and the loop stops.")
    full = steps_note({"screen": 8, "retrain": "needed", "patience": 3, "recalibrate": 2048,
                       "erase": "fade"}, 0.9)
    assert "of the 8 lowest-priority units, the one(s) whose removal alone" in full
    assert "first scored without retraining and retrained only when that fails" in full
    assert full.endswith("the next candidates are tried; 3 rejections in a row stop the loop. "
                         "Every untrained score was taken with BatchNorm statistics "
                         "re-estimated on 2048 training images.")
    # re-estimation is only mentioned where something was scored untrained: a fade erases
    # without changing any output, a cut is measured before it retrains
    assert "BatchNorm" not in steps_note({"recalibrate": 2048, "retrain": "always",
                                          "erase": "fade"}, 0.9)
    cut = steps_note({"recalibrate": 2048, "retrain": "always", "erase": "cut"}, 0.9)
    assert cut.endswith("the loop stops. A cut that retrains was first measured as it was (the "
                        "step's validation top-1 right after the cut). Every untrained score "
                        "was taken with BatchNorm statistics re-estimated on 2048 training "
                        "images.")
    assert "right after the cut" not in steps_note({"retrain": "always", "erase": "cut"}, 0.9)
    # --reconstruct: the cut is scored re-fitted; re-estimation is left to the screen
    refit = steps_note({"screen": 25, "recalibrate": 2048, "reconstruct": 1024,
                        "retrain": "needed", "erase": "cut"}, 0.9)
    assert refit.endswith("A cut that retrains was first measured as it was (the step's "
                          "validation top-1 right after the cut). Right after every cut, each "
                          "remaining conv and linear layer was re-fitted by least squares to "
                          "the net before the cut, on 1024 training images, and the cut was "
                          "scored re-fitted. Every untrained score of a screened candidate was "
                          "taken with BatchNorm statistics re-estimated on 2048 training "
                          "images.")
    assert "BatchNorm" not in steps_note({"recalibrate": 2048, "reconstruct": 1024,
                                          "retrain": "always", "erase": "cut"}, 0.9)
    per = steps_note({"screen": 8, "screen_cost": "params", "retrain": "always"}, 0.9)
    assert ("of the 8 lowest-priority units, the one(s) whose removal alone raised the "
            "validation loss least per param freed, retrains") in per
    rounds = steps_note({"screen": 8, "per_step": 12, "screen_rounds": 3,
                         "retrain": "always"}, 0.9)
    assert rounds.startswith("Each step erases units chosen in 3 rounds (each round screens "
                             "the 8 lowest-priority units left with the earlier rounds' "
                             "choices already cut and takes its share of those whose removal "
                             "cost least validation loss), retrains")
    # more rounds than units a step erases: one a round
    assert "chosen in 2 rounds" in steps_note({"screen": 8, "per_step": 2, "screen_rounds": 5,
                                               "retrain": "always"}, 0.9)


def test_step_table_shows_top1_right_after_the_cut_only_where_measured():
    from resprune.report.implosion import step_table

    start = {"val_top1": 0.9, "depth": 20, "params": 1000, "macs": 5000}
    step = {"step": 1, "erased": ["layer1.1"], "priorities": {"layer1.1": 0.25},
            "val_top1": 0.89, "accepted": True, "depth": 18, "params": 900, "macs": 4000}
    plain = step_table({"start": start, "steps": [step]})
    assert "right after" not in plain
    cut = step_table({"start": start, "steps": [{**step, "cut_val_top1": 0.625}]})
    head, _, first, second = cut.splitlines()[:4]
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert cols[3] == "val top-1 right after the cut"
    assert [c.strip() for c in first.strip("|").split("|")][3] == "-"
    row = [c.strip() for c in second.strip("|").split("|")]
    assert row[3:5] == ["62.50 %", "89.00 %"]
