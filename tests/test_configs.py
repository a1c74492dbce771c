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


# the recipe configs of the best converged-network rows, and the benchmark row each reproduces
RECIPES = {"resnet56-compress-450k.yaml": "r56-compress-steps3-450k",
           "resnet56-vacl-450k.yaml": "r56-vacl-taylor-450k",
           "resnet56-implode-heldout.yaml": "r56-implode-heldout-r2",
           "resnet56-implode-oneshot.yaml": "r56-implode-heldout-oneshot-cut",
           "resnet56-compress-depthfirst.yaml": "r56-compress-oneshot-r2"}


def _row_commands(tmp_path: Path) -> tuple[object, dict[str, list[str]]]:
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("_bench_jpeg_rows",
                                                      bench / "cifar10_jpeg_resnet56.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module, module.commands(tmp_path / "runs")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_config_is_exactly_its_rows_options(name, tmp_path):
    """A recipe config resolves to the very options its benchmark row ran with, so the
    numbers its header quotes are the numbers a user of the file gets."""
    path = Path(__file__).resolve().parents[1] / "configs" / "cifar10-jpeg" / name
    assert path in STAGE_CONFIGS
    module, rows = _row_commands(tmp_path)
    row = rows[RECIPES[name]]
    assert row[0] == "resprune"
    cmd, start = row[1], row[2]
    extra = row[row.index("--data-dir"):row.index("--data-dir") + 2] if "--data-dir" in row \
        else []
    out = ["--out", str(tmp_path / "r")]

    def options(argv):
        return {k: v for k, v in vars(parse(argv)).items()
                if k not in ("config", "_parser", "func")}

    ran = options(row[1:] + out)
    recipe = options([cmd, start, "--config", str(path), *extra] + out)
    assert recipe == ran
    # and the file is not a copy of the row's base config (it holds the row's overrides)
    base = options([cmd, start, "--config", str(path.with_name(f"resnet56-{cmd}.yaml")),
                    *extra] + out)
    assert base != ran
