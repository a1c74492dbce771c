"""Every option is defined once, in a config dataclass: the command line's options and YAML keys
are generated from its fields (resprune.fields + resprune.cli.options.add_fields)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from resprune import CompressConfig, ImplosionConfig, UserError, VaclConfig
from resprune.cli.config import apply_config
from resprune.cli.main import build_parser, main
from resprune.cli.options import add_fields, field_values
from resprune.fields import Choice, Flag, Float, Floats, Int, check_fields, opt, spec
from resprune.train import DistillConfig, TrainConfig


def _subparsers():
    return next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices
                ).choices


def _cli_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if spec(f) and spec(f)["cli"]}


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


# the fields a command sets itself (input run's seed, epochs/lr of its own stages)
OWN = {"implode": {"epochs", "lr", "seed"}, "vacl": {"epochs", "lr", "seed"},
       "compress": {"seed"}, "train": set()}


@pytest.mark.parametrize("command, classes", [
    ("train", (TrainConfig, DistillConfig)),
    ("implode", (ImplosionConfig, TrainConfig, DistillConfig)),
    ("vacl", (VaclConfig, TrainConfig, DistillConfig)),
    ("compress", (CompressConfig, TrainConfig, DistillConfig)),
])
def test_every_field_is_an_option_with_its_default_help_and_check(command, classes):
    actions = {a.dest: a for a in _subparsers()[command]._actions}
    n = 0
    for cls in classes:
        for name, f in _cli_fields(cls).items():
            if name in OWN[command] or (command == "compress" and cls is CompressConfig
                                        and name in {"seed"}):
                continue
            a = actions[name]  # the option exists, under the field's name
            assert a.option_strings[0] == "--" + name.replace("_", "-")
            want = _default(f)
            got = tuple(a.default) if isinstance(want, tuple) else a.default
            assert got == want, (command, name, got, want)
            check = spec(f)["check"]
            if isinstance(check, Choice):
                assert tuple(a.choices) == check.choices
            elif isinstance(check, Flag):
                assert isinstance(a, argparse.BooleanOptionalAction)
            n += 1
    assert n >= {"train": 18, "implode": 30, "vacl": 40, "compress": 60}[command]


@pytest.mark.parametrize("argv, message", [
    (["vacl", "RUN", "--out", "OUT", "--max-layer-reduction", "1.5"],
     "argument --max-layer-reduction: must be a number > 0 and <= 1, got 1.5"),
    (["implode", "RUN", "--out", "OUT", "--per-step", "0"],
     "argument --per-step: must be an integer >= 1, got 0"),
    (["train", "--model", "resnet8", "--data", "synthetic", "--out", "OUT", "--momentum", "1"],
     "argument --momentum: must be a number >= 0 and < 1, got 1"),
    (["compress", "RUN", "--out", "OUT", "--fade", "cubic"],
     "argument --fade: invalid choice: 'cubic'"),
])
def test_a_bad_value_on_the_command_line_is_one_line_naming_the_option(argv, message, capsys,
                                                                      tmp_path):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_a_bad_yaml_value_or_key_is_one_error_naming_it(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    for text, message in [
        ("max-layer-reduction: 0\n", "option 'max-layer-reduction': must be a number > 0 and "
                                     "<= 1, got 0"),
        ("sparse_epochs: 2.5\n", "option 'sparse_epochs': must be an integer >= 0, got 2.5"),
        ("fade: cubic\n", "option 'fade' must be one of off, linear, got 'cubic'"),
        ("include-bn: 1\n", "option 'include-bn' must be true or false, got 1"),
        ("lamda: 0.1\n", "unknown option 'lamda' for 'resprune vacl'"),
    ]:
        cfg.write_text(text)
        assert main(["vacl", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                     "--config", str(cfg)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


# -- the generator on a toy config ---------------------------------------------------------
@dataclass
class Toy:
    rate: float = opt(0.5, "a rate", Float(0, 1, open_low=True))
    steps: int = opt(3, "steps", Int(1))
    cap: int | None = opt(None, "optional cap", Int(1, optional=True), metavar="N")
    mode: str = opt("a", "mode", Choice(("a", "b"), label="toy mode"))
    enabled: bool = opt(True, "switch", Flag())
    marks: tuple[float, ...] = opt((0.5,), "marks", Floats(0, 1))
    hidden: int = opt(7, "not on the command line", Int(0), cli=False)


def _toy_parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy")
    add_fields(p.add_argument_group("toy"), Toy, **kw)
    return p


def test_generated_options_parse_convert_and_round_trip_to_the_dataclass():
    p = _toy_parser()
    args = p.parse_args([])
    assert Toy(**field_values(args, Toy)) == Toy()
    args = p.parse_args(["--rate", "1", "--steps", "4", "--cap", "2", "--mode", "b",
                         "--no-enabled", "--marks", "0.25", "0.75"])
    toy = Toy(**field_values(args, Toy))
    assert toy == Toy(rate=1.0, steps=4, cap=2, mode="b", enabled=False, marks=(0.25, 0.75))
    assert not hasattr(args, "hidden")
    check_fields(toy)
    helps = {a.dest: a.help for a in p._actions}
    assert helps["rate"] == "a rate (default 0.5)" and helps["cap"] == "optional cap"
    p = _toy_parser(prefix="x-", defaults={"steps": 9}, helps={"steps": "how many"},
                    skip=("marks",))
    args = p.parse_args(["--x-rate", "0.1"])
    assert args.x_rate == 0.1 and args.x_steps == 9 and not hasattr(args, "x_marks")


@pytest.mark.parametrize("argv", [["--rate", "0"], ["--rate", "x"], ["--steps", "0"],
                                  ["--steps", "1.5"], ["--mode", "c"], ["--cap", "0"]])
def test_generated_options_refuse_out_of_range_values(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _toy_parser().parse_args(argv)
    assert e.value.code == 2
    assert f"argument {argv[0]}" in capsys.readouterr().err


def test_yaml_keys_are_the_generated_options(tmp_path):
    p = argparse.ArgumentParser(prog="toy")
    sub = p.add_subparsers().add_parser("t", prog="toy t")
    add_fields(sub.add_argument_group("toy"), Toy)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rate: 1\nsteps: 5\nenabled: false\nmarks: [0.2, 0.4]\n")
    apply_config(sub, cfg)
    args = p.parse_args(["t"])
    assert Toy(**field_values(args, Toy)) == Toy(rate=1.0, steps=5, enabled=False, marks=(0.2, 0.4))
    cfg.write_text("steps: 0\n")
    with pytest.raises(UserError, match="option 'steps': must be an integer >= 1, got 0"):
        apply_config(sub, cfg)
    cfg.write_text("hidden: 3\n")
    with pytest.raises(UserError, match="unknown option 'hidden'"):
        apply_config(sub, cfg)


def test_check_fields_names_the_field_and_allows_none_only_when_optional():
    check_fields(Toy(cap=None))
    for bad, message in [(dict(rate=0), "rate must be a number > 0 and <= 1, got 0"),
                         (dict(steps=True), "steps must be an integer >= 1, got True"),
                         (dict(mode="c"), "unknown toy mode 'c'; choose one of: a, b"),
                         (dict(enabled=None), "enabled must be true or false, got None"),
                         (dict(marks=(0.6, 0.2)), "marks must be increasing numbers"),
                         (dict(hidden=-1), "hidden must be an integer >= 0, got -1")]:
        with pytest.raises(UserError, match=message):
            check_fields(Toy(**bad))


@pytest.mark.parametrize("command", ["vacl", "compress"])
def test_a_budget_on_the_command_line_replaces_the_config_files(command, tmp_path):
    """The budget options exclude each other: the file's target-params-reduction applies
    when the command line gives no budget, and --target-macs-reduction replaces it (no clash);
    the file's other options stay."""
    from resprune.cli.main import parse

    cfg = tmp_path / "c.yaml"
    cfg.write_text("target-params-reduction: 0.85\nfinetune-lr: 0.02\n")
    base = [command, "RUN", "--config", str(cfg), "--out", str(tmp_path / "o")]
    args = parse(base)
    assert (args.target_params_reduction, args.target_macs_reduction) == (0.85, None)
    args = parse(base + ["--target-macs-reduction", "0.5"])
    assert (args.target_params_reduction, args.target_macs_reduction) == (None, 0.5)
    assert args.finetune_lr == 0.02
    args = parse(base + ["--target-params-reduction", "0.6"])
    assert args.target_params_reduction == 0.6


@pytest.mark.parametrize("command", ["vacl", "compress"])
def test_a_replaced_file_budget_is_noted_once_on_stderr(command, tmp_path, capsys):
    """A command-line budget that drops a target the file set says so (one line on stderr);
    one that replaces the same option, or a file without a budget, says nothing."""
    from resprune.cli.main import parse

    cfg = tmp_path / "c.yaml"
    cfg.write_text("target-params-reduction: 0.85\n")
    base = [command, "RUN", "--config", str(cfg), "--out", str(tmp_path / "o")]
    parse(base + ["--target-macs-reduction", "0.7"])
    out, err = capsys.readouterr()
    assert out == "" and err == (
        "resprune: note: the command line's budget (--target-macs-reduction) replaces the "
        "config file's (target-params-reduction 0.85); to keep both, give "
        "--target-params-reduction and --target-macs-reduction on the command line\n")
    for extra in (["--target-params-reduction", "0.6"],
                  ["--target-params-reduction", "0.85", "--target-macs-reduction", "0.7"], []):
        parse(base + extra)
        assert capsys.readouterr() == ("", "")
    cfg.write_text("finetune-lr: 0.02\n")
    parse(base + ["--target-macs-reduction", "0.7"])
    assert capsys.readouterr() == ("", "")
