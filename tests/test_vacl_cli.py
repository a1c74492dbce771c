"""``resprune vacl``: the command end to end on synthetic data, resume, and bad input."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest
import torch
from PIL import Image

import resprune
from resprune import vacl
from resprune.cli.main import main
from resprune.data import load_dataset, make_loader
from resprune.measure import count_macs, count_params, evaluate
from resprune.report.vacl import _rule, score_label
from resprune.train import Callback, TrainConfig, Trainer
from resprune.vacl import pipeline as vacl_pipeline

from .conftest import QUIET

CIFAR = (3, 32, 32)

# 2 + 2 epochs of 15 batches each: a kill inside an epoch resumes from a real checkpoint
STAGES = ["--sparse-epochs", "2", "--finetune-epochs", "2", "--lam", "1e-3"]
REFERENCE = [*QUIET, *STAGES, "--target-params-reduction", "0.4"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def read_summary(run):
    return json.loads((run / "summary.json").read_text())


def weights(run) -> dict[str, torch.Tensor]:
    return resprune.load(run).state_dict()


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory):
    """The uninterrupted run, printed with --json."""
    out = tmp_path_factory.mktemp("vacl") / "run"
    stdout = tmp_path_factory.mktemp("stdout") / "stdout.txt"
    with open(stdout, "w") as f, contextlib.redirect_stdout(f):
        code = main(["vacl", str(trained), *REFERENCE, "--json", "--out", str(out)])
    assert code == 0
    return out, stdout.read_text()


def library_pipeline(trained) -> tuple[torch.nn.Module, dict]:
    """The same pipeline written against the Python API, all in memory."""
    bundle = load_dataset("synthetic", val_fraction=0.1, seed=0)
    train = make_loader(bundle, "train", 32, train=True, seed=0)
    val = make_loader(bundle, "val", 256, train=False, seed=0)
    model = resprune.load(trained)
    reg = vacl.Regularizer(model, form="moments", beta=4.0, lam=1e-3, input_shape=CIFAR)
    cfg = dict(batch_size=32, lr=0.01, device="cpu", seed=0)
    Trainer(model, train, val, TrainConfig(epochs=2, **cfg), loss_terms=[reg],
            progress=False).fit()
    report = vacl.prune(model, CIFAR, target_params_reduction=0.4)
    Trainer(model, train, val, TrainConfig(epochs=2, **cfg), progress=False).fit()
    return model.eval(), report


# -- the happy path -------------------------------------------------------------------------

def test_vacl_writes_the_library_pipelines_smaller_model(trained, reference):
    out, stdout = reference
    summary = read_summary(out)
    assert stdout.count("\n") == 1 and json.loads(stdout) == summary  # --json: one object
    base_model, model = resprune.load(trained).eval(), resprune.load(out).eval()
    expected, report = library_pipeline(trained)
    x = torch.randn(8, *CIFAR, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), expected(x))  # same weights, same logits, bit for bit
    assert resprune.spec_of(model) == resprune.spec_of(expected)
    # fewer params; every count agrees with the model and with the arithmetic
    assert summary["kind"] == "vacl" and summary["model"] == "resnet8"
    base = summary["base"]
    assert base["params"] == count_params(base_model) > count_params(model) == summary["params"]
    assert summary["params"] == report["params_after"] == summary["prune"]["params_after"]
    assert summary["macs"] == count_macs(model, CIFAR) == report["macs_after"]
    assert base["macs"] == count_macs(base_model, CIFAR)
    assert summary["params_removed_pct"] == pytest.approx(
        100 * (base["params"] - summary["params"]) / base["params"])
    assert summary["macs_removed_pct"] == pytest.approx(
        100 * (base["macs"] - summary["macs"]) / base["macs"])
    assert summary["params_removed_pct"] >= 40.0 and summary["prune"]["target_reached"]
    assert summary["depth"] == base["depth"] == 8  # width pruning keeps every layer
    convs = {n: m.out_channels for n, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d)}
    base_convs = {n: m.out_channels for n, m in base_model.named_modules()
                  if isinstance(m, torch.nn.Conv2d)}
    assert summary["widths"] == {n: [base_convs[n], convs[n]] for n in base_convs}
    assert list(summary["widths"]) == list(base_convs)  # network order
    pr = summary["prune"]
    assert pr["groups_removed"] == len(report["removed_groups"]) > 0
    assert sum(pr["removed_by_kind"].values()) == pr["groups_removed"]
    assert pr["groups_total"] == sum(summary["groups"].values()) == summary["group_rms"]["count"]
    for k in ("before", "after"):
        h = summary["group_rms"]
        assert sum(h[k]) + h[f"zeros_{k}"] == h["count"]
    # the base is the input model measured on the input run's own splits
    assert base["top1"] == pytest.approx(read_summary(trained)["top1"])
    assert base["val_top1"] == pytest.approx(read_summary(trained)["val_top1"])
    assert summary["data"] == read_summary(trained)["data"]
    # accuracy before fine-tuning is the pruned stage model's own
    bundle = load_dataset("synthetic", val_fraction=0.1, seed=0)
    pruned = resprune.load(out / "stages" / "pruned")
    test = make_loader(bundle, "test", 256, train=False)
    assert summary["top1_before_finetune"] == evaluate(pruned, test)["top1"]
    assert count_params(pruned) == summary["params"]
    assert summary["epochs"] == 4
    assert summary["epochs_detail"] == {"sparse": 2, "steps": 0, "finetune": 2}
    assert summary["prune_steps"] == []
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["epoch"], r["stage"], r["stage_epoch"]) for r in records] == [
        (1, "sparse", 1), (2, "sparse", 2), (3, "finetune", 1), (4, "finetune", 2)]
    assert all("extra_loss" in r for r in records[:2]) and "extra_loss" not in records[2]
    for key in ("top1", "val_top1", "top5", "seconds", "input_shape", "config", "cpu_latency_ms",
                "top1_after_sparse", "val_top1_after_sparse", "val_top1_before_finetune"):
        assert key in summary, key
    assert summary["config"]["lam"] == 1e-3 and summary["config"]["form"] == "moments"
    # a finished run keeps stage weights and logs, not optimizer states
    assert not list((out / "stages").glob("*/train_state.pt"))
    assert not (out / "train_state.pt").exists()


def test_report_and_plots(reference, capsys):
    out, _ = reference
    summary = read_summary(out)
    report = (out / "report.md").read_text()
    for png in ("group_rms.png", "widths.png", "training.png"):
        assert f"]({png})" in report
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
    assert f"| fine-tuned | {summary['params'] / 1e3:.2f} k |" in report
    assert f"{100 * summary['top1_before_finetune']:.2f} % |" in report
    assert f"| removed | {summary['params_removed_pct']:.2f} % |" in report
    for name, (before, after) in summary["widths"].items():
        assert f"| `{name}` | {before} | {after} |" in report
    # the saved model's validation accuracy is the summary's (same split reproduced)
    code, stdout, err = run_cli(["eval", out, "--split", "val", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["top1"] == pytest.approx(summary["val_top1"])


def test_threshold_removes_exactly_the_groups_below_it(trained, tmp_path, capsys):
    """No training: the removed groups are those of the input whose RMS is below T."""
    model = resprune.load(trained)
    groups = vacl.discover_groups(model, CIFAR)
    scores = vacl.group_scores(model, groups)
    t = float(scores.median())
    below = {groups[i].name for i in range(len(groups)) if scores[i] < t}
    cfg = tmp_path / "vacl.yaml"  # options from a config file; flags win
    cfg.write_text("sparse-epochs: 3\nfinetune_epochs: 0\nthreshold: 0.5\n")
    out = tmp_path / "run"
    code, stdout, err = run_cli(["vacl", trained, "--config", cfg, *QUIET, "--sparse-epochs",
                                 "0", "--threshold", t, "--out", out], capsys)
    assert code == 0, err
    s = read_summary(out)
    report = json.loads((out / "stages" / "pruned" / "prune_report.json").read_text())
    skipped = report["units_skipped_to_keep_layers"]
    assert set(report["removed_groups"]) <= below
    assert len(report["removed_groups"]) + skipped == len(below)
    assert s["prune"]["mode"] == "threshold" and s["prune"]["cutoff"] == pytest.approx(t)
    # the report names the score the threshold applied to (the default, layer_rms)
    assert s["prune"]["score"] == "layer_rms"
    assert f"every group with layer-normalised RMS below {t:g} removed" in \
        (out / "report.md").read_text()
    assert s["epochs"] == 0 and s["config"]["finetune_epochs"] == 0
    # nothing was trained: the accuracies after "sparsity training" are the input's, and the
    # fine-tuned model is the pruned one
    assert s["top1_after_sparse"] == s["base"]["top1"]
    assert s["top1"] == s["top1_before_finetune"]
    assert "removed" in stdout and "channel groups" in stdout
    # --overwrite replaces the finished run
    code, _, err = run_cli(["vacl", trained, *QUIET, "--sparse-epochs", "0",
                            "--finetune-epochs", "0", "--target-macs-reduction", "0.3", "--out",
                            out, "--overwrite"], capsys)
    assert code == 0, err
    s = read_summary(out)
    assert s["prune"]["mode"] == "macs" and s["macs_removed_pct"] >= 30.0


# -- resume -----------------------------------------------------------------------------------

class Interrupt(Callback):
    """Ctrl-C in the middle of the second epoch (15 batches per epoch)."""

    def after_step(self, trainer):
        if trainer.global_step == 20:
            raise KeyboardInterrupt


def _interrupt_trainer(which: int):
    calls = {"n": 0}

    def factory(*args, **kwargs):  # trainings: 1 = sparsity training, 2 = fine-tuning
        calls["n"] += 1
        extra = [Interrupt()] if calls["n"] == which else []
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + extra
        return Trainer(*args, **kwargs)

    return factory


def _raise(*args, **kwargs):
    raise KeyboardInterrupt


KILLS = {  # where a run dies -> the phase its state.json records
    "mid-sparse": "sparse", "before-prune": "prune", "before-finetune": "finetune",
    "mid-finetune": "finetune"}


def _kill_at(monkeypatch, kill: str) -> None:
    if kill == "mid-sparse":
        monkeypatch.setattr(vacl_pipeline, "Trainer", _interrupt_trainer(1))
    elif kill == "mid-finetune":  # a resumed run builds only the fine-tuning Trainer
        monkeypatch.setattr(vacl_pipeline, "Trainer", _interrupt_trainer(1))
    elif kill == "before-prune":
        monkeypatch.setattr(vacl_pipeline, "_prune", _raise)
    else:  # the resumed run is past pruning: its first training is the fine-tuning
        monkeypatch.setattr(vacl_pipeline, "_fit", _raise)


def test_resume_after_kills_equals_uninterrupted_run(trained, reference, tmp_path, monkeypatch,
                                                     capsys):
    """Killed at every point in turn (each resume dies at the next), then finished."""
    ref_out, _ = reference
    out = tmp_path / "run"
    for i, kill in enumerate(KILLS):
        _kill_at(monkeypatch, kill)
        args = [*REFERENCE] if i == 0 else ["--resume", "--no-progress"]
        code, _, err = run_cli(["vacl", trained, *args, "--out", out], capsys)
        monkeypatch.undo()
        assert code == 130 and "rerun the same command with --resume" in err, (kill, err)
        assert not (out / "summary.json").exists()
        assert json.loads((out / "state.json").read_text())["phase"] == KILLS[kill]
    # without --resume the half-finished run is protected
    code, _, err = run_cli(["vacl", trained, *REFERENCE, "--out", out], capsys)
    assert code == 2 and "pass --overwrite to replace the run in it or --resume" in err
    # resume with no options at all: the saved ones are reused
    code, _, err = run_cli(["vacl", trained, "--out", out, "--resume", "--no-progress"],
                           capsys)
    assert code == 0, err
    assert same_weights(weights(out), weights(ref_out))
    for stage in ("sparse", "pruned"):
        assert same_weights(weights(out / "stages" / stage), weights(ref_out / "stages" / stage))
    ref, got = read_summary(ref_out), read_summary(out)
    for key in ("params", "macs", "top1", "val_top1", "top1_after_sparse",
                "top1_before_finetune", "val_top1_before_finetune", "widths", "prune",
                "group_rms", "epochs", "epochs_detail", "params_removed_pct"):
        assert got[key] == ref[key], key
    assert got["config"] == {**ref["config"], "out": str(out), "json": False, "resume": True}
    drop = ("seconds", "images_per_s")
    strip = [{k: v for k, v in json.loads(line).items() if k not in drop}
             for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert strip == [{k: v for k, v in json.loads(line).items() if k not in drop}
                     for line in (ref_out / "metrics.jsonl").read_text().splitlines()]


def test_resume_of_a_finished_run_trains_nothing(reference, trained, tmp_path, capsys,
                                                 monkeypatch):
    ref_out, _ = reference
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    monkeypatch.setattr(vacl_pipeline, "Trainer", _raise)
    monkeypatch.setattr(vacl_pipeline, "_prune", _raise)
    code, stdout, err = run_cli(["vacl", trained, "--out", out, "--resume", "--json"], capsys)
    assert code == 0, err
    after, before = json.loads(stdout), read_summary(ref_out)
    for key in ("params", "top1", "val_top1", "prune", "widths", "epochs", "group_rms"):
        assert after[key] == before[key], key
    assert same_weights(weights(out), weights(ref_out))


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,msg", [
    (["--lam", "-1", "--threshold", "0.1"], "argument --lam: must be a number >= 0, got -1"),
    (["--beta", "-2", "--threshold", "0.1"], "argument --beta: must be a number >= 0, got -2"),
    (["--target-params-reduction", "1"],
     "argument --target-params-reduction: must be a number >= 0 and < 1, got 1"),
    (["--target-macs-reduction", "-0.1"],
     "argument --target-macs-reduction: must be a number >= 0 and < 1, got -0.1"),
    (["--threshold", "0.1", "--target-params-reduction", "0.5"],
     "give exactly one of --threshold, --target-params-reduction, --target-macs-reduction, "
     "--target-latency-reduction, --target-latency and --auto-tolerance, or both "
     "--target-params-reduction and --target-macs-reduction (got --threshold, "
     "--target-params-reduction)"),
    (["--target-macs-reduction", "0.5", "--target-latency-reduction", "0.3"],
     "or both --target-params-reduction and --target-macs-reduction (got "
     "--target-macs-reduction, --target-latency-reduction)"),
    ([], "give exactly one of --threshold, --target-params-reduction, "
         "--target-macs-reduction, --target-latency-reduction, --target-latency and "
         "--auto-tolerance, or both --target-params-reduction and --target-macs-reduction "
         "(got none)"),
    (["--threshold", "-1"], "argument --threshold: must be a number >= 0, got -1"),
    (["--form", "l1", "--threshold", "0.1"], "argument --form: invalid choice: 'l1'"),
    (["--sparse-lr", "0", "--threshold", "0.1"],
     "argument --sparse-lr: must be a number > 0, got 0"),
    (["--finetune-epochs", "-1", "--threshold", "0.1"],
     "argument --finetune-epochs: must be an integer >= 0, got -1"),
    (["--data", "digits", "--threshold", "0.1"],
     "--data digits has 10 classes of 1-channel images but the model"),
    (["--lr", "0.1", "--threshold", "0.1"], "unrecognized arguments: --lr 0.1"),
    (["--resume", "--overwrite", "--threshold", "0.1"],
     "--overwrite and --resume contradict each other"),
    (["--resume", "--threshold", "0.1"], "nothing to resume in"),
])
def test_bad_options_one_line_exit_2(trained, tmp_path, capsys, extra, msg):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["vacl", trained, *QUIET, "--out", out, *extra], capsys)
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("resprune: error: ") and msg in err, err
    assert not out.exists()  # nothing written


def test_refuses_bad_runs(trained, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [(tmp_path / "empty", "is not a resprune run directory (no arch.json)"),
             (tmp_path / "missing", f"run directory {tmp_path / 'missing'} does not exist"),
             (trained / "summary.json", "is a file, not a run directory; vacl needs")]
    for run, msg in cases:
        code, _, err = run_cli(["vacl", run, "--data", "synthetic", "--threshold", "0.1",
                                "--out", tmp_path / "out"], capsys)
        assert code == 2 and err.count("\n") == 1 and msg in err, err
    code, _, err = run_cli(["vacl", trained, "--threshold", "0.1", "--out", trained], capsys)
    assert code == 2 and "is the input run; write the result to a new directory" in err
    # a run of another command cannot be resumed as vacl
    other = tmp_path / "train-run"
    assert main(["train", "--model", "resnet8", "--width", "4", "--data", "synthetic",
                 "--epochs", "0", *QUIET, "--out", str(other)]) == 0
    code, _, err = run_cli(["vacl", trained, "--threshold", "0.1", "--out", other, "--resume"],
                           capsys)
    assert code == 2 and "is a 'train' run; resume it with 'resprune train ... --resume'" in err
    assert not (tmp_path / "out").exists()


def test_round_to_option_reaches_the_widths_and_the_summary(trained, tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = run_cli(["vacl", trained, *QUIET, "--sparse-epochs", "1",
                            "--finetune-epochs", "1", "--target-params-reduction", "0.4",
                            "--round-to", "3", "--out", out], capsys)
    assert code == 0, err
    s = read_summary(out)
    assert s["prune"]["round_to"] == 3 and s["prune"]["target_reached"]
    assert s["params_removed_pct"] >= 40.0
    for name, (before, after) in s["widths"].items():
        assert after % 3 == 0 or after == before, (name, before, after)
    assert s["config"]["round_to"] == 3


def test_taylor_score_removes_the_groups_with_the_least_taylor_importance(trained, tmp_path,
                                                                           capsys):
    """``--group-score taylor``: the command scores the input on --taylor-batches training
    batches (epoch 0 of the run's training loader) and prunes exactly what vacl.prune removes
    with those scores; the ranking differs from the default one."""
    model = resprune.load(trained)
    groups = vacl.discover_groups(model, CIFAR)
    bundle = load_dataset("synthetic", val_fraction=0.1, seed=0)
    train = make_loader(bundle, "train", 32, train=True, seed=0)
    scores = vacl.group_scores(model, groups, score="taylor", loader=train, batches=3)
    want = vacl.prune(resprune.load(trained), CIFAR, target_params_reduction=0.3,
                      groups=groups, scores=scores)
    default = vacl.prune(resprune.load(trained), CIFAR, target_params_reduction=0.3)
    assert want["removed_groups"] != default["removed_groups"]
    out = tmp_path / "run"
    code, _, err = run_cli(["vacl", trained, *QUIET, "--sparse-epochs", "0", "--finetune-epochs",
                            "0", "--group-score", "taylor", "--taylor-batches", "3",
                            "--target-params-reduction", "0.3", "--out", out], capsys)
    assert code == 0, err
    report = json.loads((out / "stages" / "pruned" / "prune_report.json").read_text())
    assert report["removed_groups"] == want["removed_groups"]
    assert report["score"] == "taylor"


# -- --plan -----------------------------------------------------------------------------------

PLAN = ["--group-score", "taylor", "--target-macs-reduction", "0.5"]


def test_plan_prints_what_each_ranking_removes_and_writes_nothing(trained, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in trained.iterdir())
    code, stdout, err = run_cli(["vacl", trained, *QUIET, *PLAN, "--plan", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(stdout)
    assert [r["cost"] for r in rows] == ["none", "params", "macs"]
    assert sorted(p.name for p in trained.iterdir()) == before and not any(tmp_path.iterdir())
    # each row is exactly what a run with that ranking and no sparsity training prunes
    for row in rows[:2]:
        out = tmp_path / row["cost"]
        code, _, err = run_cli(["vacl", trained, *QUIET, *PLAN, "--cost", row["cost"],
                                "--sparse-epochs", "0", "--finetune-epochs", "0", "--out", out],
                               capsys)
        assert code == 0, err
        pr = read_summary(out)["prune"]
        for key in ("params_after", "macs_after", "groups_removed", "removed_by_kind",
                    "target_reached"):
            assert row[key] == pr[key], key
        model = resprune.load(out)
        assert row["params_after"] == count_params(model)
        assert row["macs_after"] == count_macs(model, CIFAR)
        assert row["macs_reduction"] >= 0.5
    code, stdout, _ = run_cli(["vacl", trained, *QUIET, *PLAN, "--plan"], capsys)
    assert code == 0 and stdout.startswith("plan: --target-macs-reduction 0.5, --group-score "
                                           "taylor")
    for row in rows:
        assert f"{100 * row['macs_reduction']:.2f} %" in stdout


def test_params_and_macs_targets_together_run_as_planned(trained, tmp_path, capsys):
    """vacl with both targets prunes what its plan shows, reaches both, and says so in the
    summary, the terminal and report.md."""
    both = ["--group-score", "taylor", "--target-params-reduction", "0.5",
            "--target-macs-reduction", "0.6"]
    code, stdout, err = run_cli(["vacl", trained, *QUIET, *both, "--plan", "--json"], capsys)
    assert code == 0, err
    plan_row = json.loads(stdout)[0]
    out = tmp_path / "both"
    code, stdout, err = run_cli(["vacl", trained, *QUIET, *both, "--sparse-epochs", "0",
                                 "--finetune-epochs", "0", "--out", out], capsys)
    assert code == 0, err
    s = read_summary(out)
    pr = s["prune"]
    assert pr["mode"] == "params+macs" and pr["targets"] == {"params": 0.5, "macs": 0.6}
    assert pr["target_reached"] and pr["params_reduction"] >= 0.5
    assert pr["macs_reduction"] >= 0.6
    for key in ("params_after", "macs_after", "groups_removed", "target_reached"):
        assert plan_row[key] == pr[key], key
    assert "target params reduction 50.00 %, MACs reduction 60.00 %" in stdout
    report = (out / "report.md").read_text()
    assert "Pruning: the groups of lowest Taylor importance removed until parameters fell by " \
           "at least 50.00 % and MACs fell by at least 60.00 % (reached)" in report
    assert "Group scores (Taylor importance): median " in report


@pytest.mark.parametrize("record, label", [
    ({"prune": {"score": "taylor", "cost": "params"}}, "Taylor importance"),
    ({"prune": {"score": "rms"}}, "RMS norm"),
    ({"prune": {}, "config": {"group_score": "layer_rms"}}, "layer-normalised RMS"),
    ({"prune": {"mode": "threshold"}}, "RMS norm"),  # written before the score was kept
    ({"mode": "threshold", "score": "taylor"}, "Taylor importance"),  # a compress stage rule
])
def test_reports_name_the_score_the_groups_were_ranked_by(record, label):
    assert score_label(record) == label


def test_ranking_per_cost_is_described_with_its_score_and_cost():
    pr = {"mode": "params", "score": "taylor", "cost": "macs", "targets": {"params": 0.5},
          "target_reached": True}
    assert _rule(pr).startswith("groups removed by Taylor importance per MAC saved "
                                "(lowest first) until parameters fell by at least 50.00 %")


def test_plan_of_a_threshold_has_one_row_and_leaves_the_model(trained):
    model = resprune.load(trained)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = vacl.plan(model, load_dataset("synthetic", val_fraction=0.1, seed=0),
                     vacl.VaclConfig(threshold=0.5, group_score="rms"))
    assert [r["cost"] for r in rows] == ["none"]
    assert same_weights(model.state_dict(), state)
    report = vacl.prune(resprune.load(trained), CIFAR, threshold=0.5, score="rms")
    assert rows[0]["params_after"] == report["params_after"] > 0


def test_plan_scores_each_row_after_batchnorm_re_estimation(trained):
    """recalibrate=N: each row's val top-1 and loss are exactly those of the pruned model with
    its BatchNorm statistics re-estimated on the first N training images of the same loader."""
    bundle = load_dataset("synthetic", val_fraction=0.25, seed=0)
    loaders = tuple(make_loader(bundle, split, 32, train=split == "train")
                    for split in ("train", "val", "test"))
    config = vacl.VaclConfig(target_params_reduction=0.5, group_score="rms")
    model = resprune.load(trained)
    rows = vacl.plan(model, loaders, config, costs=("none", "macs"), recalibrate=64)
    assert [r["recalibrated_on"] for r in rows] == [64, 64]
    for row in rows:
        pruned = resprune.load(trained)
        vacl.prune(pruned, CIFAR, target_params_reduction=0.5, score="rms", cost=row["cost"])
        stale = evaluate(pruned, loaders[1])
        resprune.measure.recalibrate_batchnorm(pruned, loaders[0], 64, seed=0)
        want = evaluate(pruned, loaders[1])
        assert (row["val_top1"], row["val_loss"]) == (want["top1"], want["loss"])
        assert row["val_loss"] != stale["loss"]  # the statistics did change
    # the input model is left as it was, and without recalibrate no row is scored
    assert same_weights(model.state_dict(), weights(trained))
    assert "val_top1" not in vacl.plan(model, loaders, config, costs=("none",))[0]


def test_plan_recalibrate_prints_a_val_column_and_needs_plan(trained, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(["vacl", trained, *QUIET, *PLAN, "--plan", "--plan-recalibrate",
                                 "64", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(stdout)
    code, text, err = run_cli(["vacl", trained, *QUIET, *PLAN, "--plan", "--plan-recalibrate",
                               "64"], capsys)
    assert code == 0, err
    assert "val top-1 (BN re-estimated)" in text
    assert "after BatchNorm re-estimation on 64 training images" in text
    for row in rows:
        assert f"{100 * row['val_top1']:.2f} %" in text
    code, stdout, err = run_cli(["vacl", trained, *QUIET, *PLAN, "--plan-recalibrate", "64"],
                                capsys)
    assert (code, stdout) == (2, "")
    assert err.strip().endswith("--plan-recalibrate scores the rows of a plan: add --plan")
    assert len(err.strip().splitlines()) == 1 and not any(tmp_path.iterdir())
    code, stdout, err = run_cli(["vacl", trained, *PLAN, "--plan", "--plan-recalibrate", "0"],
                                capsys)
    assert (code, stdout) == (2, "") and "--plan-recalibrate" in err


@pytest.mark.parametrize("extra, msg", [
    (["--target-params-reduction", "0.5"], "--out is required (or --plan, which writes nothing)"),
    (["--plan", "--threshold", "0.1", "--out", "x"],
     "--plan trains and writes nothing: drop --out, --resume and --overwrite"),
    (["--plan", "--auto-tolerance", "0.5"], "a plan compares rankings on the analytic size "
                                            "model"),
    (["--plan", "--target-latency-reduction", "0.3"], "a plan compares rankings"),
])
def test_plan_and_out_bad_options_one_line_exit_2(trained, tmp_path, capsys, monkeypatch,
                                                  extra, msg):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(["vacl", trained, *QUIET, *extra], capsys)
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("resprune: error: ") and msg in err, err
    assert not any(tmp_path.iterdir())


def test_feature_distillation_pulls_the_kept_streams_and_refuses_pruned_ones(trained, tmp_path,
                                                                             capsys):
    """--distill-features: with every residual-stream channel kept (only groups inside units
    removed) the fine-tuning logs its feature loss; once a cross-layer group is removed the
    streams no longer pair channel for channel: one line, exit 2."""
    common = [*QUIET, "--group-score", "taylor", "--sparse-epochs", "0", "--finetune-epochs",
              "1", "--distill-from", "input", "--distill-features", "1"]
    out = tmp_path / "kept"
    code, _, err = run_cli(["vacl", trained, *common, "--target-params-reduction", "0.1",
                            "--out", out], capsys)
    assert code == 0, err
    s = read_summary(out)
    base = resprune.load(trained)
    assert s["widths"]["layer3.0.conv2"][1] == base.layer3[0].conv2.out_channels  # stream kept
    assert s["params"] < count_params(base)
    ft = [json.loads(line) for line in
          (out / "stages" / "finetune" / "metrics.jsonl").read_text().splitlines()]
    assert ft and all(r["feature_loss"] > 0 for r in ft)
    out = tmp_path / "pruned"
    code, stdout, err = run_cli(["vacl", trained, *common, "--cost", "params",
                                 "--target-params-reduction", "0.6", "--out", out], capsys)
    last = err.splitlines()[-1]  # after the stages' progress lines, at the first step
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert last.startswith("resprune: error: feature distillation pairs every unit's output "
                           "channel for channel: unit layer"), err
    assert last.endswith("(a pruned residual stream; use --distill-attention instead)")
