"""``resprune compress``: the whole pipeline, its arithmetic, resume, stage order, bad input."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest
import torch

import resprune
from resprune.cli.main import build_parser, main, parse
from resprune.compression import CompressConfig, vacl_share
from resprune.compression import pipeline as compress_pipeline
from resprune.data import load_dataset, make_loaders
from resprune.measure import count_macs, count_params, depth
from resprune.train import TrainConfig
from resprune.vacl import pipeline as vacl_pipeline

CIFAR = (3, 32, 32)
QUIET = ["--batch-size", "32", "--no-progress"]
# every stage short: 1 training epoch, one implosion step, 1 + 1 VACL epochs, 1 fine-tune epoch
FAST = [*QUIET, "--epochs", "1", "--retrain-epochs", "1", "--max-steps", "1", "--tolerance",
        "50", "--sparse-epochs", "1", "--finetune-epochs", "1", "--finetune-final-epochs", "1"]
MODEL = ["--model", "resnet14", "--width", "4", "--data", "synthetic"]
REFERENCE = [*MODEL, *FAST, "--target-params-reduction", "0.6"]


def read_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def same_weights(a: Path, b: Path) -> bool:
    x, y = resprune.load(a).state_dict(), resprune.load(b).state_dict()
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted pipeline (train, implode, vacl, finetune), printed with --json."""
    out = tmp_path_factory.mktemp("compress") / "run"
    stdout = tmp_path_factory.mktemp("stdout") / "stdout.txt"
    with open(stdout, "w") as f, contextlib.redirect_stdout(f):
        code = main(["compress", *REFERENCE, "--json", "--out", str(out)])
    assert code == 0
    return out, stdout.read_text()


def test_all_stages_run_and_out_is_a_smaller_loadable_run(reference, capsys):
    out, stdout = reference
    s = read_summary(out)
    assert stdout.count("\n") == 1 and json.loads(stdout) == s  # --json: one object only
    assert s["kind"] == "compress" and s["model"] == "resnet14"
    names = [r["name"] for r in s["stages"]]
    assert names == ["train", "implode", "vacl", "finetune"]
    assert [r["dir"] for r in s["stages"]] == [f"stages/{i}-{n}" for i, n in
                                               enumerate(names, 1)]
    stage = {r["name"]: read_summary(out / r["dir"]) for r in s["stages"]}
    # each stage is a normal run of its kind, fed the previous stage's model
    assert [stage[n]["kind"] for n in names] == ["train", "implode", "vacl", "train"]
    gated = resprune.load(out / "stages/1-train").state_dict()
    assert sum(k.endswith(".gate") for k in gated) == 4  # implode follows: priority gates
    assert stage["implode"]["base"]["run"] == str(out / "stages/1-train")
    assert stage["vacl"]["base"]["run"] == str(out / "stages/2-implode")
    assert stage["vacl"]["base"]["params"] == stage["implode"]["params"]
    assert stage["finetune"]["epochs"] == 1 and stage["finetune"]["config"]["lr"] == 0.01
    # OUT holds the final stage's model: fewer params, fewer layers, same weights
    assert same_weights(out, out / "stages/4-finetune")
    model, base_model = resprune.load(out), resprune.load(out / "stages/1-train")
    assert count_params(model) == s["params"] < count_params(base_model) == s["base"]["params"]
    assert count_macs(model, CIFAR) == s["macs"] < s["base"]["macs"]
    assert depth(model) == s["depth"] < s["base"]["depth"] == 14
    # eval and profile accept OUT as a normal run
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(s["top1"])


def test_summary_figures_follow_the_arithmetic(reference):
    out, _ = reference
    s = read_summary(out)
    base, recs = s["base"], s["stages"]
    stage = {r["name"]: read_summary(out / r["dir"]) for r in recs}
    for key in ("params", "macs", "depth", "top1", "val_top1"):
        assert base[key] == stage["train"][key]
        assert [r[key] for r in recs] == [stage[r["name"]][key] for r in recs]
        assert s[key] == stage["finetune"][key]
    prev = base
    for r in recs:  # removals vs the stage before (the base for the first)
        assert r["params_removed_pct"] == pytest.approx(
            100 * (prev["params"] - r["params"]) / prev["params"])
        assert r["macs_removed_pct"] == pytest.approx(
            100 * (prev["macs"] - r["macs"]) / prev["macs"])
        prev = r
    assert s["params_removed_pct"] == pytest.approx(
        100 * (base["params"] - s["params"]) / base["params"])
    assert s["macs_removed_pct"] == pytest.approx(100 * (base["macs"] - s["macs"]) / base["macs"])
    assert s["layers_removed_pct"] == pytest.approx(
        100 * (base["depth"] - s["depth"]) / base["depth"])
    assert s["epochs"] == sum(r["epochs"] for r in recs) == sum(
        stage[n]["epochs"] for n in stage)
    assert s["seconds"] == pytest.approx(sum(r["seconds"] for r in recs), abs=0.02)
    # the budget: implosion first by accuracy, VACL takes the share still missing
    implode = stage["implode"]
    assert recs[1]["layers_removed"] == base["depth"] - implode["depth"] > 0
    share = 1 - (1 - 0.6) * base["params"] / implode["params"]
    assert stage["vacl"]["prune"]["target_reduction"] == pytest.approx(share)
    assert recs[2]["rule"]["target_reduction"] == pytest.approx(share)
    assert recs[2]["rule"]["score"] == stage["vacl"]["prune"]["score"] == "layer_rms"
    assert s["budget"] == {"mode": "params", "targets": {"params": 0.6},
                           "target_reduction": 0.6, "reached": True}
    assert s["params_removed_pct"] >= 60.0
    assert s["data"] == stage["finetune"]["data"] and s["input_shape"] == [3, 32, 32]


def test_report_shows_stages_side_by_side_and_embeds_their_plots(reference):
    out, _ = reference
    text = (out / "report.md").read_text()
    for label in ("base (trained)", "after implode", "after vacl", "after finetune",
                  "total vs base"):
        assert f"| {label}" in text or f"| **{label}" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "sizes.png" in images
    assert any(p.startswith("stages/2-implode/") for p in images)
    assert any(p.startswith("stages/3-vacl/") for p in images)
    for p in images:  # every embedded plot exists, by a path relative to OUT
        assert (out / p).is_file() and (out / p).read_bytes()[:4] == b"\x89PNG"


class Once:
    """Raise KeyboardInterrupt on the ``at``-th call (only), else behave like ``real``."""

    def __init__(self, real, at: int = 1):
        self.real, self.calls, self.at = real, 0, at

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def test_resume_after_kills_within_and_between_stages_matches(reference, tmp_path,
                                                               monkeypatch, capsys):
    ref_out, _ = reference
    out = tmp_path / "run"
    args = ["compress", *REFERENCE, "--out", str(out)]
    # 1. killed inside the vacl stage: sparsity training and pruning done, fine-tuning not
    # (the vacl stage trains twice: sparsity training, then fine-tuning)
    monkeypatch.setattr(vacl_pipeline, "_fit", Once(vacl_pipeline._fit, at=2))
    assert main(args) == 130
    assert "--resume" in capsys.readouterr().err
    assert (out / "stages/2-implode/summary.json").is_file()
    assert not (out / "stages/3-vacl/summary.json").is_file()
    assert not (out / "summary.json").exists()
    # 2. resumed; killed again between stages, as the finetune stage starts
    # (the train stage is done, so the first training run is the finetune stage's)
    monkeypatch.setattr(compress_pipeline, "train_run", Once(compress_pipeline.train_run))
    assert main([*args, "--resume"]) == 130
    err = capsys.readouterr().err
    assert "stage 1/4 train: done" in err and "stage 2/4 implode: done" in err
    assert "stage 3/4 vacl" in err and "(resuming)" in err
    assert (out / "stages/3-vacl/summary.json").is_file()
    assert not any((out / "stages/4-finetune").glob("*"))  # made, nothing in it yet
    # 3. resumed to the end: the same final weights as the uninterrupted run
    assert main([*args, "--resume"]) == 0
    capsys.readouterr()
    assert same_weights(out, ref_out)
    s, ref = read_summary(out), read_summary(ref_out)
    assert [r["name"] for r in s["stages"]] == [r["name"] for r in ref["stages"]]
    for k in ("params", "macs", "depth", "top1", "val_top1", "epochs"):
        assert s[k] == ref[k]


def test_params_and_macs_budget_together(reference, tmp_path, capsys):
    """Both targets: the vacl stage gets each metric's missing share of the base (what
    implosion left), the result reaches both, and summary, terminal and report say so."""
    run = reference[0] / "stages/1-train"
    out = tmp_path / "both"
    assert main(["compress", str(run), *FAST, "--target-params-reduction", "0.5",
                 "--target-macs-reduction", "0.6", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    s = read_summary(out)
    assert s["budget"] == {"mode": "params+macs", "targets": {"params": 0.5, "macs": 0.6},
                           "reached": True}
    assert s["params_removed_pct"] >= 50.0 and s["macs_removed_pct"] >= 60.0
    base, implode = s["base"], read_summary(out / s["stages"][0]["dir"])
    vacl_s = read_summary(out / s["stages"][1]["dir"])
    assert vacl_s["prune"]["targets"] == {
        m: pytest.approx(1 - (1 - r) * base[m] / implode[m])
        for m, r in (("params", 0.5), ("macs", 0.6))}
    assert s["stages"][1]["rule"]["targets"] == vacl_s["prune"]["targets"]
    assert "target params reduction 50.00 %, macs reduction 60.00 % reached" in stdout
    assert ("Budget: reduce the base's parameters by at least 50.00 % and MACs by at least "
            "60.00 % (reached)") in (out / "report.md").read_text()


def test_stage_order_vacl_then_implode_from_a_run(reference, tmp_path, capsys):
    ref_out, _ = reference
    run = ref_out / "stages/1-train"  # a trained run (with priority gates)
    out = tmp_path / "vi"
    assert main(["compress", str(run), "--stages", "vacl,implode", *FAST, "--out",
                 str(out)]) == 0
    capsys.readouterr()
    s = read_summary(out)
    assert [(r["name"], r["dir"]) for r in s["stages"]] == [("vacl", "stages/1-vacl"),
                                                            ("implode", "stages/2-implode")]
    vacl_s, implode_s = (read_summary(out / r["dir"]) for r in s["stages"])
    assert vacl_s["base"]["run"] == str(run)
    assert implode_s["base"]["run"] == str(out / "stages/1-vacl")
    assert implode_s["base"]["params"] == vacl_s["params"]  # implode starts from vacl's output
    assert same_weights(out, out / "stages/2-implode")
    # no target: VACL chose its reduction on validation accuracy, with --tolerance
    assert s["budget"] == {"mode": "auto", "auto_tolerance": 50.0}
    assert vacl_s["prune"]["auto"]["tolerance"] == 50.0
    assert s["stages"][0]["rule"]["auto_tolerance"] == 50.0
    # the base is the input run, measured on its own split (its seed and data inherited)
    train_s = read_summary(run)
    assert s["base"]["run"] == str(run) and s["base"]["params"] == train_s["params"]
    assert s["base"]["val_top1"] == pytest.approx(train_s["val_top1"])
    assert s["data"]["seed"] == train_s["data"]["seed"] and s["data"]["name"] == "synthetic"
    assert s["params"] < s["base"]["params"] and s["depth"] <= s["base"]["depth"]


def test_every_stage_option_is_a_compress_option_once():
    subs = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices)
    comp = subs.choices["compress"]
    mine = [s for a in comp._actions for s in a.option_strings]
    assert len(mine) == len(set(mine))
    for name in ("train", "implode", "vacl"):
        theirs = {s for a in subs.choices[name]._actions for s in a.option_strings}
        assert theirs - {"--init", "--arch"} <= set(mine), name


def test_yaml_config_gives_stages_as_a_list(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stages: [vacl, finetune]\ntarget-macs-reduction: 0.5\nsparse-epochs: 3\n")
    args = parse(["compress", "runs/x", "--out", "o", "--config", str(cfg)])
    assert args.stages == ["vacl", "finetune"] and args.target_macs_reduction == 0.5
    assert args.sparse_epochs == 3
    assert parse(["compress", "runs/x", "--out", "o"]).stages == ["implode", "vacl", "finetune"]


@pytest.mark.parametrize("extra, msg", [
    ([*MODEL, "--stages", "implode,prune"], "argument --stages: unknown stage 'prune'; "
     "choose from implode, vacl, finetune"),
    ([*MODEL, "--stages", "vacl,implode,vacl"], "argument --stages: stage 'vacl' is listed "
     "twice; each stage runs at most once"),
    (["RUN", *MODEL], "give either RUN (a trained run to compress) or --model NAME (train it "
     "first), not both"),
    (["--data", "synthetic"], "give either RUN (a trained run to compress) or --model NAME "
     "(train it first), got neither"),
    ([*MODEL, "--target-params-reduction", "1"],
     "argument --target-params-reduction: must be a number >= 0 and < 1, got 1"),
    ([*MODEL, "--target-macs-reduction", "-0.1"],
     "argument --target-macs-reduction: must be a number >= 0 and < 1, got -0.1"),
    ([*MODEL, "--target-params-reduction", "0.5", "--target-latency-reduction", "0.5"],
     "give at most one of --target-params-reduction, --target-macs-reduction, "
     "--target-latency-reduction, --target-latency, --threshold, --auto-tolerance, or both "
     "--target-params-reduction and --target-macs-reduction (got "
     "--target-params-reduction, --target-latency-reduction)"),
    ([*MODEL, "--stages", "implode,finetune", "--target-params-reduction", "0.5"],
     "--target-params-reduction applies to the vacl stage, which --stages implode,finetune "
     "leaves out"),
    (["--model", "resnet14"], "--data is required with --model"),
    (["RUN", "--width", "8"], "model options (--shortcut, --width, --priority-gates, ...) "
     "only apply with --model"),
])
def test_bad_options_one_line_exit_2(reference, tmp_path, capsys, extra, msg):
    run = str(reference[0] / "stages/1-train")
    out = tmp_path / "bad"
    argv = ["compress", *[run if a == "RUN" else a for a in extra], "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resprune: error: ") and msg in err
    assert not out.exists()


def test_vacl_share_arithmetic():
    assert vacl_share(0.6, 1000, 1000) == pytest.approx(0.6)
    assert vacl_share(0.6, 1000, 500) == pytest.approx(0.2)  # 400 of 500 left
    assert vacl_share(0.5, 1000, 400) == 0.0  # already below the target
    assert 0 <= vacl_share(0.99, 1000, 999) < 1


# -- the library API ----------------------------------------------------------------------------

def test_library_compress_with_own_loaders_equals_the_command(reference, tmp_path,
                                                              monkeypatch):
    """resprune.compress() on a DataBundle's loaders, from the command's trained base, with
    the command's options: the same final weights as ``resprune compress``; resuming the
    finished run trains nothing."""
    ref_out, _ = reference
    data = load_dataset("synthetic", val_fraction=0.1, seed=0)
    loaders = make_loaders(data, 32, seed=0)
    config = CompressConfig(target_params_reduction=0.6, retrain_epochs=1, max_steps=1,
                            tolerance=50.0, sparse_epochs=1, finetune_epochs=1,
                            finetune_final_epochs=1, stages=("implode", "vacl", "finetune"),
                            train=TrainConfig(batch_size=32, device="cpu", seed=0))
    model = resprune.load(ref_out / "stages/1-train")
    out = tmp_path / "lib"
    result = resprune.compress(model, loaders, config, out=out, progress=False)
    assert same_weights(out, ref_out)
    assert sum(result.model.state_dict()[k].numel() for k in result.model.state_dict()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
               ) == result.summary["params"]
    assert result.summary["params"] == read_summary(ref_out)["params"]
    assert [n for n, _, _ in result.stages] == ["implode", "vacl", "finetune"]
    assert (out / "state.json").is_file()
    with pytest.raises(resprune.UserError, match="already holds a compress run"):
        resprune.compress(model, loaders, config, out=out, progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage trained again")

    monkeypatch.setattr(resprune.train.Trainer, "fit", no_training)
    again = resprune.compress(resprune.load(ref_out / "stages/1-train"), loaders, config,
                              out=out, resume=True, progress=False)
    assert again.summary["params"] == result.summary["params"]


def test_library_config_checks_name_the_option():
    with pytest.raises(resprune.UserError, match="per_step must be an integer >= 1"):
        CompressConfig(per_step=0).validate()
    with pytest.raises(resprune.UserError, match="unknown fade 'cubic'"):
        CompressConfig(fade="cubic").validate()
    with pytest.raises(resprune.UserError, match="the train stage can only come first"):
        CompressConfig(stages=("implode", "train")).validate()


# -- --plan -----------------------------------------------------------------------------------

@pytest.mark.parametrize("targets, scored", [({"params": 0.6}, []),
                                             ({"params": 0.6, "macs": 0.7},
                                              ["--plan-recalibrate", "32"])])
def test_plan_is_the_vacl_stages_plan_of_the_input(reference, tmp_path, capsys, monkeypatch,
                                                   targets, scored):
    monkeypatch.chdir(tmp_path)
    run = str(reference[0] / "stages/1-train")
    given = [a for k, r in targets.items() for a in (f"--target-{k}-reduction", str(r))]
    rule = [*given, "--group-score", "taylor", "--batch-size", "32", *scored]
    assert main(["compress", run, *rule, "--plan", "--json"]) == 0
    mine = json.loads(capsys.readouterr().out)
    assert main(["vacl", run, *rule, "--plan", "--json"]) == 0
    assert mine == json.loads(capsys.readouterr().out)
    assert [r["cost"] for r in mine] == ["none", "params", "macs"]
    assert all(r[f"{k}_reduction"] >= v for r in mine for k, v in targets.items())
    assert all(r["target_reached"] for r in mine)
    assert all(("val_top1" in r) == bool(scored) for r in mine)
    assert main(["compress", run, *rule, "--plan"]) == 0
    assert capsys.readouterr().out.startswith(
        "compress, vacl stage if implosion erases nothing: plan: " + " ".join(given))
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("extra, msg", [
    (["RUN", "--target-params-reduction", "0.5"],
     "--out is required (or --plan, which writes nothing)"),
    (["RUN", "--plan", "--target-params-reduction", "0.5", "--out", "x"],
     "--plan trains and writes nothing: drop --out, --resume and --overwrite"),
    ([*MODEL, "--plan", "--target-params-reduction", "0.5"],
     "--plan ranks the channel groups of a trained run: give RUN, not --model"),
    (["RUN", "--plan"], "--plan needs --target-params-reduction, --target-macs-reduction or "
                        "--threshold"),
    (["RUN", "--plan", "--stages", "implode,finetune"],
     "--plan shows the vacl stage's pruning, which --stages implode,finetune leaves out"),
])
def test_plan_and_out_bad_options_one_line_exit_2(reference, tmp_path, capsys, monkeypatch,
                                                  extra, msg):
    monkeypatch.chdir(tmp_path)
    run = str(reference[0] / "stages/1-train")
    assert main(["compress", *[run if a == "RUN" else a for a in extra]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("resprune: error: ") and msg in err, err
    assert not any(tmp_path.iterdir())
