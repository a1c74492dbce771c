"""Every shipped config parses against `resprune compress` and builds its model."""

from pathlib import Path

import pytest

from resprune.cli.main import parse
from resprune.cli.train import model_options
from resprune.models import create

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
CLASSES = {"cifar10": 10, "cifar100": 100, "imagefolder": 1000}


def test_configs_exist():
    names = {p.relative_to(p.parents[1]).as_posix() for p in CONFIGS}
    for expected in ("cifar10/resnet56-implode.yaml", "cifar10/resnet56-vacl.yaml",
                     "cifar10/resnet56-compress.yaml", "cifar10/resnet110-compress.yaml",
                     "cifar100/resnet56-compress.yaml", "cifar100/resnet110-vacl.yaml",
                     "cifar10/resnext29-vacl.yaml", "imagenet/resnet50-implode.yaml",
                     "imagenet/resnet50-vacl.yaml", "mini/cifar10-resnet56-compress.yaml"):
        assert expected in names, expected


STAGE_CONFIGS = [p for p in CONFIGS if p.parent.name == "cifar10-jpeg"]
WHOLE_CONFIGS = [p for p in CONFIGS if p not in STAGE_CONFIGS]


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stage_config_parses_for_its_command(path, tmp_path):
    """configs/cifar10-jpeg: one file per command, run on a starting model B."""
    import re

    text = path.read_text()
    assert text.startswith("# ") and "Expected runtime" in text
    command = re.search(r"Run:\s+resprune (\w+)", text)
    assert command, "the header names the command that runs it"
    cmd = command.group(1)
    if cmd == "train":  # resnet56-adapt.yaml: train --init B
        argv = ["train", "--init", "B", "--config", str(path), "--out", str(tmp_path / "r")]
    else:
        argv = [cmd, "B", "--config", str(path), "--out", str(tmp_path / "r")]
    args = parse(argv)
    assert args.command == cmd and args.device == "cpu" and args.epoch_size >= 1000
    if cmd != "train":
        assert args.distill_from == "input"


@pytest.mark.parametrize("path", WHOLE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses_and_builds(path, tmp_path):
    text = path.read_text()
    assert text.startswith("# ") and "Expected runtime" in text and "Run: resprune" in text
    args = parse(["compress", "--config", str(path), "--out", str(tmp_path / "run")])
    assert args.command == "compress" and args.model and args.data in CLASSES
    model = create(args.model, num_classes=CLASSES[args.data], **model_options(args))
    assert sum(p.numel() for p in model.parameters()) > 0
    stages = args.stages if isinstance(args.stages, str) else ",".join(args.stages)
    assert set(stages.split(",")) <= {"implode", "vacl", "finetune"}
    if path.parent.name != "mini":
        assert args.device == "cuda"
