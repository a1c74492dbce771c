"""resprune.read_config: a --config file gives Python exactly the options the command builds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import resprune
from resprune.cli import common
from resprune.cli.compress import compress_config
from resprune.cli.implode import implosion_config
from resprune.cli.main import parse
from resprune.cli.vacl import vacl_config
from resprune.errors import UserError
from resprune.models import create

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
JPEG = sorted((CONFIGS / "cifar10-jpeg").glob("*.yaml"))


def _cli_config(command: str, path: Path, tmp_path: Path):
    """What ``resprune COMMAND ... --config PATH`` builds before it runs."""
    start = ["--init", "B"] if command == "train" else ["B"]
    args = parse([command, *start, "--config", str(path), "--out", str(tmp_path / "r")])
    if args.seed is None:  # the command takes the input run's; read_config says 0
        args.seed = 0
    if command == "compress":
        return compress_config(args, list(args.stages))
    return {"vacl": vacl_config, "implode": implosion_config,
            "train": common.train_config}[command](args)


@pytest.mark.parametrize("path", JPEG, ids=lambda p: p.name)
def test_read_config_builds_what_the_command_builds(path, tmp_path):
    command = re.search(r"Run:\s+resprune (\w+)", path.read_text()).group(1)
    got = resprune.read_config(path, command)
    expected = _cli_config(command, path, tmp_path)
    assert type(got.config) is type(expected) and got.config == expected
    assert got.command == command
    if command != "train":
        assert (got.distill_from, got.distill_alpha, got.distill_temperature) == \
            ("input", 0.7, 4.0)
    else:
        assert got.data["data"] == "imagefolder" and got.data["val_fraction"] == 0.1


def test_recipe_options_reach_the_config():
    c = resprune.read_config(CONFIGS / "cifar10-jpeg" / "resnet56-compress-450k.yaml").config
    assert isinstance(c, resprune.CompressConfig)
    assert (c.prune_steps, c.step_epochs, c.group_score, c.sparse_epochs) == (3, 5, "taylor", 0)
    assert (c.target_params_reduction, c.finetune_final_epochs, c.epoch_size) == (0.85, 29, 10000)
    assert c.budget() == {"mode": "params", "targets": {"params": 0.85},
                          "target_reduction": 0.85}
    assert c.train.device == "cpu" and c.train.seed == 0


def test_distillation_from_input_is_a_frozen_copy_of_the_model():
    torch.manual_seed(0)
    model = create("resnet8", num_classes=10, width=4).eval()
    fc = resprune.read_config(CONFIGS / "cifar10-jpeg" / "resnet56-vacl-450k.yaml", "vacl")
    d = fc.distillation(model)
    x = torch.randn(3, 3, 32, 32)
    before = model(x).detach()
    assert torch.equal(d.teacher_logits(x), before)
    assert (d.alpha, d.temperature) == (0.7, 4.0)
    with torch.no_grad():  # the call prunes and trains the model; the teacher stays
        for p in model.parameters():
            p.zero_()
    assert not torch.equal(model(x), before)
    assert torch.equal(d.teacher_logits(x), before)


def test_no_distillation_and_a_teacher_run(tmp_path, trained):
    none = tmp_path / "none.yaml"
    none.write_text("distill-from: none\ntarget-params-reduction: 0.5\n")
    model = create("resnet8", num_classes=10, width=4)
    assert resprune.read_config(none, "vacl").distillation(model) is None
    run = tmp_path / "run.yaml"
    run.write_text(f"distill-from: {trained}\ndistill-alpha: 0.5\ndistill-attention: 250\n"
                   "distill-features: 2\n")
    d = resprune.read_config(run, "implode").distillation(model)
    x = torch.randn(2, 3, 32, 32)
    assert (d.alpha, d.attention, d.features) == (0.5, 250.0, 2.0)
    assert torch.equal(d.teacher_logits(x), resprune.load(trained).eval()(x))


@pytest.mark.parametrize("text, command, message", [
    ("retrain-epochs: 2\nbogus-key: 1\n", "implode",
     "unknown option 'bogus-key' for 'resprune implode'"),
    ("finetune-epochs: two\n", "vacl",
     "option 'finetune-epochs': must be an integer >= 0, got 'two'"),
    ("target-params-reduction: 0.5\nthreshold: 0.1\n", "compress", "give at most one of"),
    ("epochs: 1\n", "export", "read_config: command must be one of compress, vacl, implode, "
                              "train, got 'export'"),
])
def test_bad_files_are_refused_with_the_command_lines_message(tmp_path, text, command, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        resprune.read_config(path, command)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(UserError, match=re.escape(f"config file {tmp_path / 'no.yaml'} does "
                                                  "not exist")):
        resprune.read_config(tmp_path / "no.yaml")


def _options(args) -> dict:
    from resprune.cli.config import INTERNAL, RUN_CONTROL

    return {k: v for k, v in vars(args).items()
            if k not in INTERNAL and k not in RUN_CONTROL and not k.startswith("_")}


ROUND_TRIP = [
    ["compress", "B", "--config", str(CONFIGS / "cifar10-jpeg" / "resnet56-compress-450k.yaml"),
     "--finetune-final-epochs", "3", "--target-macs-reduction", "0.7", "--seed", "2"],
    ["vacl", "B", "--config", str(CONFIGS / "cifar10-jpeg" / "resnet56-vacl-450k.yaml"),
     "--round-to", "auto", "--no-include-bn"],
    ["implode", "B", "--config", str(CONFIGS / "cifar10-jpeg" / "resnet56-implode-heldout.yaml"),
     "--data-dir", "somewhere"],
    ["train", "--init", "B", "--config", str(CONFIGS / "cifar10-jpeg" / "resnet56-adapt.yaml"),
     "--milestones", "0.3", "0.6", "--schedule", "multistep"],
    ["compress", "--config", str(CONFIGS / "mini" / "cifar10-resnet56-compress.yaml")],
]


@pytest.mark.parametrize("argv", ROUND_TRIP,
                         ids=lambda a: f"{a[0]}-{Path(a[a.index('--config') + 1]).stem}")
def test_print_config_gives_back_the_same_options(argv, tmp_path, capsys):
    """--print-config writes a config file that, given back, yields every option unchanged
    (the config file's and the flags' alike)."""
    from resprune.cli.main import main

    out = ["--out", str(tmp_path / "r")]
    assert main([*argv, "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert not (tmp_path / "r").exists()
    dumped = tmp_path / "printed.yaml"
    dumped.write_text(printed)
    start = argv[:argv.index("--config")]
    again = parse([*start, "--config", str(dumped), *out])
    assert _options(again) == _options(parse([*argv, *out]))


def test_print_config_shows_flags_over_the_file_and_needs_no_out(capsys):
    import yaml

    from resprune.cli.main import main

    path = CONFIGS / "cifar10-jpeg" / "resnet56-implode-heldout.yaml"
    assert main(["implode", "B", "--config", str(path), "--retrain-epochs", "3",
                 "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["retrain-epochs"] == 3 and printed["per-step"] == 1
    assert printed["screen-batches"] == 6 and printed["distill-from"] == "input"
    assert "out" not in printed and "seed" not in printed  # seed: the input run's


@pytest.mark.parametrize("flag", ["--lam", "--distill-attention", "--distill-features"])
def test_print_config_still_refuses_bad_options(flag, capsys):
    from resprune.cli.main import main

    assert main(["vacl", "B", flag, "-1", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resprune: error: ") and flag in err and len(err.splitlines()) == 1


def test_distilling_from_the_input_needs_an_input_run(tmp_path, capsys):
    from resprune.cli.main import main

    path = tmp_path / "c.yaml"
    path.write_text("model: resnet8\ndata: synthetic\ntarget-params-reduction: 0.5\n"
                    "distill-from: input\n")
    message = "--distill-from input needs an input run; with --model, train the base first"
    with pytest.raises(UserError, match=re.escape(message)):
        resprune.read_config(path)
    assert main(["compress", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "r").exists()
    # a whole compress experiment (model given) starts with the train stage
    path.write_text("model: resnet8\ndata: synthetic\ntarget-params-reduction: 0.5\n")
    assert resprune.read_config(path).config.stages == ("train", "implode", "vacl", "finetune")
