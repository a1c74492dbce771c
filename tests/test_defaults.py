"""Every option is defined once: the CLI's defaults are the config dataclasses' defaults."""

from __future__ import annotations

import dataclasses

import pytest

from resprune import CompressConfig, ImplosionConfig, VaclConfig
from resprune.cli.main import build_parser
from resprune.train import TrainConfig


def _subparsers():
    return next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices
                ).choices


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    return out


@pytest.mark.parametrize("command, cls", [("implode", ImplosionConfig), ("vacl", VaclConfig),
                                          ("compress", CompressConfig)])
def test_cli_defaults_equal_the_dataclass_defaults(command, cls):
    parser = _subparsers()[command]
    dests = {a.dest: a.default for a in parser._actions}
    fields = _defaults(cls)
    # the CLI names the seed and data options itself; stages is a CLI string
    shared = sorted(set(fields) & set(dests) - {"seed", "stages", "epoch_size"})
    assert len(shared) >= (10 if command == "implode" else 15)
    for name in shared:
        cli = dests[name]
        assert cli == fields[name], (command, name, cli, fields[name])


def test_training_option_defaults_equal_train_config():
    parser = _subparsers()["train"]
    dests = {a.dest: a.default for a in parser._actions}
    fields = _defaults(TrainConfig)
    shared = sorted(set(fields) & set(dests) - {"device"})
    assert {"batch_size", "momentum", "weight_decay", "schedule", "label_smoothing"} <= set(
        shared)
    for name in shared:
        cli = dests[name]
        cli = tuple(cli) if isinstance(cli, list) else cli
        assert cli == fields[name], (name, cli, fields[name])
