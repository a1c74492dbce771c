"""``--prune-steps K``: progressive VACL pruning, checked against K chained one-step runs."""

from __future__ import annotations

import json

import pytest
import torch

import resprune
from resprune.cli.main import main
from resprune.compression import CompressConfig
from resprune.measure import count_macs, count_params
from resprune.train import Callback, Trainer
from resprune.vacl import pipeline as vacl_pipeline
from resprune.vacl.pipeline import step_rule

from .conftest import QUIET

CIFAR = (3, 32, 32)
# Taylor scores on 3 batches, no sparsity training: every step's ranking reads the data
COMMON = [*QUIET, "--sparse-epochs", "0", "--group-score", "taylor", "--taylor-batches", "3"]
TARGET = 0.5


def run(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def summary_of(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def same_weights(a, b) -> bool:
    a, b = resprune.load(a).state_dict(), resprune.load(b).state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_step_rule_leaves_a_geometric_share_of_the_input():
    base = {"params": 1000, "macs": 400}
    # 75 % in 2 steps: half of the input is left after step 1, a quarter after step 2
    assert step_rule({"target_params_reduction": 0.75}, 1, 2, base, base) == {
        "target_params_reduction": pytest.approx(0.5)}
    assert step_rule({"target_params_reduction": 0.75}, 2, 2, base, {"params": 520}) == {
        "target_params_reduction": pytest.approx(1 - 250 / 520)}
    assert step_rule({"target_macs_reduction": 0.875}, 1, 3, base, base) == {
        "target_macs_reduction": pytest.approx(0.5)}
    # an earlier step that overshot: this one removes nothing
    assert step_rule({"target_params_reduction": 0.75}, 1, 2, base, {"params": 400}) == {
        "target_params_reduction": 0.0}
    # one step is the target itself
    assert step_rule({"target_params_reduction": 0.3}, 1, 1, base, base) == {
        "target_params_reduction": pytest.approx(0.3)}
    # both targets: each metric gets its own geometric share
    assert step_rule({"target_params_reduction": 0.75, "target_macs_reduction": 0.875}, 1, 3,
                     base, {"params": 800, "macs": 300}) == {
        "target_params_reduction": pytest.approx(1 - 0.25 ** (1 / 3) * 1000 / 800),
        "target_macs_reduction": pytest.approx(1 - 200 / 300)}


class Interrupt(Callback):
    def after_step(self, trainer):
        if trainer.global_step == 20:
            raise KeyboardInterrupt


def _kill_second_trainer():
    """Trainings of a --sparse-epochs 0 run: 1 = sparse (no steps), 2 = step 1's fine-tune."""
    calls = {"n": 0}

    def factory(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [Interrupt()]
        return Trainer(*args, **kwargs)

    return factory


def _kill_second_prune():
    real, calls = vacl_pipeline._prune, {"n": 0}

    def prune(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:  # the resumed run's first prune is step 2's
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return prune


def test_k_steps_equal_k_chained_runs_and_resume(trained, tmp_path, capsys, monkeypatch):
    """Two steps (killed inside step 1's fine-tune and before step 2's pruning, resumed) give
    bit for bit the weights of two one-step runs chained by hand with the same rules."""
    base = summary_of(trained)
    # the chain: step 1 on the input, step 2 on step 1's result
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    r1 = step_rule({"target_params_reduction": TARGET}, 1, 2, base, base)
    code, err = run(["vacl", trained, *COMMON, "--finetune-epochs", "2",
                     "--target-params-reduction", r1["target_params_reduction"], "--out", s1],
                    capsys)
    assert code == 0, err
    r2 = step_rule({"target_params_reduction": TARGET}, 2, 2, base, summary_of(s1))
    code, err = run(["vacl", s1, *COMMON, "--finetune-epochs", "1",
                     "--target-params-reduction", r2["target_params_reduction"], "--out", s2],
                    capsys)
    assert code == 0, err

    out = tmp_path / "steps"
    args = ["vacl", trained, *COMMON, "--prune-steps", "2", "--step-epochs", "2",
            "--finetune-epochs", "1", "--target-params-reduction", TARGET, "--out", out]
    monkeypatch.setattr(vacl_pipeline, "Trainer", _kill_second_trainer())
    code, err = run(args, capsys)
    monkeypatch.undo()
    assert code == 130, err
    state = json.loads((out / "state.json").read_text())
    assert (state["phase"], state.get("step", 1)) == ("finetune", 1)
    monkeypatch.setattr(vacl_pipeline, "_prune", _kill_second_prune())
    code, err = run(["vacl", trained, "--out", out, "--resume", "--no-progress"], capsys)
    monkeypatch.undo()
    assert code == 130, err
    state = json.loads((out / "state.json").read_text())
    assert (state["phase"], state["step"]) == ("prune", 2)
    code, err = run(["vacl", trained, "--out", out, "--resume", "--no-progress"], capsys)
    assert code == 0, err

    stages = out / "stages"
    assert same_weights(stages / "pruned-1", s1 / "stages" / "pruned")
    assert same_weights(stages / "finetune-1", s1)
    assert same_weights(stages / "pruned", s2 / "stages" / "pruned")
    assert same_weights(out, s2)

    got, one, two = summary_of(out), summary_of(s1), summary_of(s2)
    model = resprune.load(out)
    assert got["params"] == count_params(model) == two["params"]
    assert got["macs"] == count_macs(model, CIFAR) == two["macs"]
    assert got["params_removed_pct"] >= 100 * TARGET
    assert got["params_removed_pct"] == pytest.approx(
        100 * (base["params"] - got["params"]) / base["params"])
    pr = got["prune"]  # the whole pruning, against the input
    assert pr["target_reduction"] == TARGET and pr["target_reached"]
    assert (pr["params_before"], pr["macs_before"]) == (base["params"], base["macs"])
    assert pr["params_reduction"] == pytest.approx(1 - got["params"] / base["params"])
    assert pr["groups_removed"] == one["prune"]["groups_removed"] + two["prune"]["groups_removed"]
    assert got["widths"] == {n: [w[0], two["widths"][n][1]] for n, w in one["widths"].items()}
    steps = got["prune_steps"]
    assert [s["step"] for s in steps] == [1, 2]
    assert [s["rule"] for s in steps] == [r1, r2]
    assert [s["params_after"] for s in steps] == [one["params"], two["params"]]
    assert [s["groups_removed"] for s in steps] == [one["prune"]["groups_removed"],
                                                   two["prune"]["groups_removed"]]
    assert [s["top1_before_finetune"] for s in steps] == [one["top1_before_finetune"],
                                                          two["top1_before_finetune"]]
    assert steps[0]["val_top1_after_finetune"] == pytest.approx(one["val_top1"])
    assert steps[1]["val_top1_after_finetune"] == pytest.approx(got["val_top1"])
    assert [s["finetune_epochs"] for s in steps] == [2, 1]
    assert got["top1_before_finetune"] == two["top1_before_finetune"]
    assert got["top1"] == two["top1"]
    assert got["epochs"] == 3
    assert got["epochs_detail"] == {"sparse": 0, "steps": 2, "finetune": 1}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["stage"], r["stage_epoch"]) for r in records] == [
        (1, "step-1", 1), (2, "step-1", 2), (3, "finetune", 1)]
    report = (out / "report.md").read_text()
    assert "in 2 steps" in report and "## Pruning steps" in report
    assert not list(stages.glob("*/train_state.pt"))


@pytest.mark.parametrize("extra,msg", [
    (["--threshold", "0.1"], "--prune-steps above 1 splits a params or MACs target into steps"),
    (["--target-params-reduction", "0.5", "--cost", "latency"],
     "--prune-steps above 1 splits a params or MACs target into steps"),
    (["--target-params-reduction", "0.5", "--prune-steps", "0"],
     "argument --prune-steps: must be an integer >= 1, got 0"),
])
def test_bad_steps_one_line_exit_2(trained, tmp_path, capsys, extra, msg):
    out = tmp_path / "out"
    steps = [] if "--prune-steps" in extra else ["--prune-steps", "2"]
    code, err = run(["vacl", trained, *QUIET, *steps, *extra, "--out", out], capsys)
    assert code == 2 and err.count("\n") == 1 and msg in err, err
    assert not out.exists()


def test_compress_passes_the_steps_to_its_vacl_stage():
    config = CompressConfig(target_params_reduction=0.8, prune_steps=3, step_epochs=2)
    vacl = config.vacl_config({"target_params_reduction": 0.7})
    assert (vacl.prune_steps, vacl.step_epochs) == (3, 2)
    assert vacl.stage("step").epochs == 2 and vacl.stage("step").lr == vacl.finetune_lr
