"""Glue shared by the subcommands: data, model options, training config, measuring, output."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import UserError
from ..io import atomic_write_json, read_json
from ..report import fmt_acc, fmt_count, fmt_ms, text_table
from . import options
from .config import resolved

__all__ = ["resolved"]

# options that only say how to run, not what to compute: a resumed run may change them
RUNTIME_OPTIONS = {"out", "overwrite", "resume", "json", "no_progress", "device", "workers",
                   "cache_dir", "verbose", "quiet"}


def log(msg: str) -> None:
    """A message of the command itself (stderr; hidden by ``-q``)."""
    logging.getLogger("resprune.cli").info(msg)


def warn(msg: str) -> None:
    """A warning of the command itself (stderr; shown even with ``-q``)."""
    logging.getLogger("resprune.cli").warning(msg)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA device is available; "
                        "use --device cpu")
    return torch.device(name)


def record_command(args: argparse.Namespace, out: Path, resuming: bool) -> None:
    """Save the resolved options at the start of a run; on --resume, reuse them.

    A resumed run must compute what the interrupted one would have, so it takes the saved
    options (only runtime options such as --device or --json may change).
    """
    path = out / "command.json"
    if resuming:
        if not path.is_file():
            raise UserError(f"{out} has no command.json: it was not started by this command, "
                            "so it cannot be resumed")
        saved = read_json(path, "command file")
        if saved.get("command") != args.command:
            raise UserError(f"{out} is a '{saved.get('command')}' run; resume it with "
                            f"'resprune {saved.get('command')} ... --resume'")
        for k, v in saved.get("options", {}).items():
            if k not in RUNTIME_OPTIONS and hasattr(args, k):
                setattr(args, k, v)
        return
    atomic_write_json(path, {"command": args.command, "options": resolved(args),
                             "resprune": __version__})


def load_data(args: argparse.Namespace, preprocess: dict[str, Any] | None = None):
    """The dataset of ``--data``, prepared the way a model expects (its ``preprocess``)."""
    from ..data import load_dataset

    extra = {}
    if args.data == "imagefolder":
        extra = {"in_memory": getattr(args, "in_memory", None),
                 "cache_dir": getattr(args, "cache_dir", None),
                 "workers": getattr(args, "workers", 0),
                 "progress": not getattr(args, "no_progress", False)}
    return load_dataset(args.data, args.data_dir, val_fraction=args.val_fraction,
                        seed=args.seed, download=getattr(args, "download", False),
                        preprocess=preprocess, **extra)


def model_input_shape(model: nn.Module, bundle=None) -> tuple[int, int, int]:
    """``(C, H, W)``: the data's when given, else the model's preprocessing, else the
    family's default (32 px CIFAR, 224 px ImageNet)."""
    from ..data import input_shape
    from ..models import spec_of
    from ..runs import default_input_shape

    if bundle is not None:
        return input_shape(bundle)
    pre = getattr(model, "preprocess", None)
    if pre:
        return (model.conv1.in_channels, pre["input_size"], pre["input_size"])
    return tuple(default_input_shape(spec_of(model)))  # type: ignore[return-value]


def adopt_preprocess(model: nn.Module, bundle) -> None:
    """A model without recorded preprocessing (an old run) takes the data's, so the runs it
    leads to record it."""
    if getattr(model, "preprocess", False) is None:
        model.preprocess = bundle.preprocess()


def make_loaders(bundle, args: argparse.Namespace, device: torch.device, batch_size=None):
    """:func:`resprune.data.make_loaders` with the command's data and training options."""
    from ..data import make_loaders as build

    return build(bundle, batch_size or args.batch_size, device=device, seed=args.seed,
                 num_workers=getattr(args, "workers", 0),
                 channels_last=getattr(args, "channels_last", False),
                 epoch_size=getattr(args, "epoch_size", None))


def train_config(args: argparse.Namespace, prefix: str = "", **overrides: Any):
    """A TrainConfig from the shared training options; ``prefix`` picks e.g. retrain_epochs."""
    from ..measure._device import bf16_warning, resolve_device
    from ..train import TrainConfig

    p = prefix.replace("-", "_")
    warning = bf16_warning(resolve_device(args.device), args.precision)
    if warning and not getattr(args, "force_bf16", False):
        warn(f"resprune: {warning}; training in fp32 (pass --force-bf16 to insist)")
        args.precision = "fp32"
    values = options.field_values(args, TrainConfig)
    values["epochs"] = getattr(args, f"{p}epochs", getattr(args, "epochs", 0))
    values["lr"] = getattr(args, f"{p}lr", getattr(args, "lr", TrainConfig.lr))
    return TrainConfig(**{**values, **overrides}).validate()


def distillation(args: argparse.Namespace, input_run: str | Path | None):
    """The :class:`~resprune.train.Distillation` of ``--distill-from`` (``None`` without it).

    ``input`` names the command's input run. The teacher must take the student's inputs: the
    same classes, channels and preprocessing.
    """
    from ..checkpoint import load
    from ..train import Distillation

    source = getattr(args, "distill_from", None)
    if not source or source == "none":
        return None
    if source == "input":
        if input_run is None:
            raise UserError("--distill-from input needs an input model (train: --init RUN); "
                            "pass a run directory instead")
        source = input_run
    teacher = load(source)
    args.distill_from = str(source)
    return Distillation(teacher, args.distill_alpha, args.distill_temperature,
                        args.distill_attention, args.distill_features)


def check_teacher(teacher, model: nn.Module) -> None:
    """One line when a teacher cannot teach ``model`` (classes, channels, preprocessing)."""
    if teacher is None:
        return
    t = teacher.teacher
    if (t.fc.out_features, t.conv1.in_channels) != (model.fc.out_features,
                                                    model.conv1.in_channels):
        raise UserError(f"the --distill-from model has {t.fc.out_features} classes of "
                        f"{t.conv1.in_channels}-channel images, the model being trained "
                        f"{model.fc.out_features} of {model.conv1.in_channels}")
    tp, mp = getattr(t, "preprocess", None), getattr(model, "preprocess", None)
    if tp and mp and tp != mp:
        raise UserError("the --distill-from model expects other preprocessing than the model "
                        "being trained (mean/std/input size differ); distil from a model "
                        "trained on the same data")


def data_info(bundle, args: argparse.Namespace) -> dict[str, Any]:
    """``summary.json``'s ``data`` entry, with the data directory as the user gave it."""
    from ..data import data_info as info

    return {**info(bundle, args.data_dir), "val_fraction": args.val_fraction,
            "seed": args.seed}


def base_summary(kind: str, model_name: str, args: argparse.Namespace, bundle,
                 input_shape, started: float) -> dict[str, Any]:
    """What the command adds to a library pipeline's summary.json. ``seconds`` is the
    pipeline's own (measured when it ends); here it is the set-up time so far, for commands
    whose summary has no pipeline behind it (the library's value replaces it)."""
    return {"kind": kind, "model": model_name, "resprune": __version__,
            "input_shape": list(input_shape), "data": data_info(bundle, args),
            "seconds": round(time.time() - started, 2),
            "config": resolved(args)}


def emit(args: argparse.Namespace, summary: dict[str, Any], text: str) -> None:
    """--json: one JSON object on stdout; otherwise a readable table."""
    if getattr(args, "json", False):
        print(json.dumps(summary))
    else:
        print(text)


def metrics_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    headers = ["model", "params", "MACs", "depth", "latency b1", "latency b64",
               "val top-1", "test top-1"]
    body = []
    for label, m in rows:
        lat = m.get("cpu_latency_ms", {})
        body.append([label, fmt_count(m.get("params")), fmt_count(m.get("macs")),
                     m.get("depth", "-"), fmt_ms(lat.get("1")), fmt_ms(lat.get("64")),
                     fmt_acc(m.get("val_top1")), fmt_acc(m.get("top1"))])
    return text_table(headers, body)


def load_input_run(run_dir: str, command: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The model, architecture spec and summary (``{}`` when it has none) of an input run.

    Shared by the commands that start from a trained run (``resprune vacl``, ...); ``command``
    names the command in the error for a file passed where a run directory belongs.
    """
    from ..checkpoint import load, load_spec
    from ..runs import SUMMARY_FILE, read_summary

    path = Path(run_dir)
    if path.is_file():
        raise UserError(f"RUN {path} is a file, not a run directory; {command} needs a "
                        "directory holding model.safetensors and arch.json (e.g. written by "
                        "'resprune train')")
    spec = load_spec(path)
    model = load(path)
    summary = read_summary(path) if (path / SUMMARY_FILE).is_file() else {}
    return model, spec, summary


def check_data_fits(bundle, spec: dict[str, Any], args: argparse.Namespace) -> None:
    """The dataset must have the classes and image channels the input run's model expects."""
    if (bundle.num_classes, bundle.in_channels) != (spec["num_classes"], spec["in_channels"]):
        raise UserError(f"--data {args.data} has {bundle.num_classes} classes of "
                        f"{bundle.in_channels}-channel images but the model in {args.run} "
                        f"expects {spec['num_classes']} classes of {spec['in_channels']}-channel "
                        "images; pass the dataset the run was trained on")


@dataclass
class InputRun:
    """What a command that starts from a trained run has opened before writing anything."""

    model: nn.Module
    spec: dict[str, Any]
    summary: dict[str, Any]
    bundle: Any
    device: torch.device
    input_shape: tuple[int, ...]
    out: Path | None  # the run directory being resumed, else None until open_output


def open_input(args: argparse.Namespace, command: str) -> InputRun:
    """Start ``resprune COMMAND RUN``: the input run, its data and the device, checked.

    On ``--resume`` the output directory is opened first, because its saved options win over
    the command line (:func:`record_command`). Otherwise nothing is written: the command checks
    its own options next and only then calls :func:`open_output`, so bad input leaves no
    directory behind.
    """
    from ..data import input_shape, with_preprocess
    from ..runs import prepare_out
    from .evaluate import inherit_data_options

    out = None
    if args.resume:
        out, resuming = prepare_out(args.out, overwrite=args.overwrite, resume=True,
                                    source=args.run)
        args.resume = resuming  # False: killed before anything was saved, starts afresh
        if resuming:
            record_command(args, out, True)
        else:
            out = None
    model, spec, summary = load_input_run(args.run, command)
    inherit_data_options(args, summary)
    device = resolve_device(args.device)
    bundle = load_data(args)
    check_data_fits(bundle, spec, args)
    with_preprocess(bundle, spec.get("preprocess"))
    adopt_preprocess(model, bundle)
    return InputRun(model, spec, summary, bundle, device, input_shape(bundle), out)


def open_output(args: argparse.Namespace, run: InputRun) -> Path:
    """The output directory of a new run (created, options recorded), or the resumed one."""
    from ..runs import prepare_out

    if run.out is None:
        run.out, _ = prepare_out(args.out, overwrite=args.overwrite, source=args.run)
        record_command(args, run.out, False)
    return run.out


def run_pipeline(args: argparse.Namespace, start: InputRun, kind: str, pipeline, config,
                 teacher, started: float, terminal_text) -> int:
    """The shared tail of ``implode`` and ``vacl``: open the output, build the loaders, call
    the library ``pipeline(model, loaders, config, ...)`` and print its summary."""
    out = open_output(args, start)
    loaders = make_loaders(start.bundle, args, start.device)
    extra = base_summary(kind, start.summary.get("model") or start.spec["arch"], args,
                         start.bundle, start.input_shape, started)
    result = pipeline(start.model, loaders, config, out=out, resume=bool(args.resume),
                      distill=teacher, progress=not args.no_progress,
                      input_shape=start.input_shape, source=args.run, summary_extra=extra)
    emit(args, result.summary, terminal_text(result.summary, out))
    return 0

