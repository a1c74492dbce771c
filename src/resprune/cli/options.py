"""Option groups shared by the subcommands (one definition per option)."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"invalid positive integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def positive_float(text: str) -> float:
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def nonneg_float(text: str) -> float:
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    v = finite_float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {v}")
    return v


def fraction_closed(text: str) -> float:
    """A number in [0, 1]."""
    v = finite_float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return v


def fraction_open(text: str) -> float:
    """A number in (0, 1]."""
    v = finite_float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {v}")
    return v


def add_fade_end(g) -> None:
    """``--fade-end``, shared by implode's ``--erase fade`` and vacl's ``--fade``."""
    g.add_argument("--fade-end", type=fraction_open, default=0.75, metavar="F",
                   help="with implode --erase fade / vacl --fade: the faded units or channel "
                        "groups reach exactly zero after this fraction of the training's steps "
                        "and stay zero for the rest (default 0.75)")


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="YAML file of options (keys = option names); command-line flags win")


def add_output(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", required=required, metavar="RUN",
                   help="run directory to write (refuses an existing run unless --overwrite "
                        "or --resume)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out")
    g.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its last checkpoint")
    g.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object on stdout (progress on stderr)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_data(p: argparse.ArgumentParser, required: bool = True) -> None:
    from ..data import DATASETS

    g = p.add_argument_group("data")
    g.add_argument("--data", choices=DATASETS, required=required,
                   help="dataset (digits and synthetic need no files)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="dataset directory (CIFAR: the folder holding cifar-10-batches-py/; "
                        "imagefolder: the folder holding train/ and val/)")
    g.add_argument("--download", action="store_true",
                   help="download CIFAR into --data-dir if it is missing (needs a network)")
    g.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="fraction of the training set held out as the validation split that "
                        "every decision uses (default 0.1)")
    g.add_argument("--workers", type=nonneg_int, default=0,
                   help="image folders: DataLoader workers for large images (default 0 = in "
                        "the main process); processes decoding small images (0 = all cores)")
    g.add_argument("--in-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="image folders: decode all images once into memory and cache them "
                        "(default: when images are at most 64 px)")
    g.add_argument("--cache-dir", metavar="DIR",
                   help="where decoded small-image folders are cached (default "
                        "$RESPRUNE_CACHE_DIR or ~/.cache/resprune)")


def add_train(p: argparse.ArgumentParser, *, epochs: int | None = 30, lr: float | None = 0.1,
              prefix: str = "", title: str = "training", seed_of: str | None = None) -> None:
    """Optimisation options. ``prefix`` (e.g. "retrain-") namespaces a second schedule.

    ``seed_of`` (e.g. "every retraining"): the command starts from an input run, so ``--seed``
    defaults to that run's seed (None here), which reproduces its validation split.
    ``epochs=None`` / ``lr=None`` leave out ``--{prefix}epochs`` / ``--{prefix}lr`` (a command
    whose schedules are all prefixed, such as ``implode``, has no plain ``--lr``).
    """
    g = p.add_argument_group(title)
    if epochs is not None:
        g.add_argument(f"--{prefix}epochs", type=nonneg_int, default=epochs,
                       help=f"epochs (default {epochs})")
    if lr is not None:
        g.add_argument(f"--{prefix}lr", type=finite_float, default=lr,
                       help=f"peak learning rate (default {lr})")
    if prefix:
        return
    g.add_argument("--batch-size", type=positive_int, default=128, help="batch size (128)")
    g.add_argument("--epoch-size", type=positive_int, default=None, metavar="N",
                   help="training images per epoch: each epoch trains on a fresh seeded random "
                        "N of the training split (budgets below one epoch; default: all)")
    g.add_argument("--momentum", type=nonneg_float, default=0.9, help="SGD momentum (0.9)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                   help="Nesterov momentum (default on)")
    g.add_argument("--weight-decay", type=nonneg_float, default=5e-4,
                   help="weight decay (5e-4)")
    g.add_argument("--schedule", choices=["cosine", "multistep", "constant"], default="cosine",
                   help="learning-rate schedule (cosine)")
    g.add_argument("--milestones", type=finite_float, nargs="+", default=[0.5, 0.75],
                   help="multistep milestones as fractions of training (0.5 0.75)")
    g.add_argument("--gamma", type=finite_float, default=0.1, help="multistep factor (0.1)")
    g.add_argument("--warmup-epochs", type=nonneg_float, default=0.0,
                   help="linear warm-up epochs (0)")
    g.add_argument("--label-smoothing", type=nonneg_float, default=0.0,
                   help="label smoothing (0)")
    g.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32, or bf16 autocast on CPU and CUDA. On a CPU without native bf16 "
                        "(no AVX-512 BF16 / AMX) bf16 is emulated, about 15x slower: resprune "
                        "says so and trains in fp32 unless --force-bf16 is given")
    g.add_argument("--force-bf16", action="store_true",
                   help="keep --precision bf16 even on a CPU without native bf16")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto = cuda when available")
    g = p.add_argument_group("distillation (every training of the command)")
    g.add_argument("--distill-from", metavar="RUN|input",
                   help="distil from this run's model as teacher (frozen, eval mode, same "
                        "batches); 'input' = the command's input model (train: --init); 'none' = "
                        "off (default)")
    g.add_argument("--distill-alpha", type=fraction_closed, default=0.7,
                   help="weight of the teacher's soft targets; 1 - alpha goes to the labels "
                        "(0.7)")
    g.add_argument("--distill-temperature", type=positive_float, default=4.0,
                   help="softmax temperature of the soft targets (4)")
    if seed_of is None:
        g.add_argument("--seed", type=nonneg_int, default=0,
                       help="seed for weights, validation split, shuffling and augmentation (0)")
    else:
        g.add_argument("--seed", type=nonneg_int, default=None,
                       help=f"seed of the validation split and of {seed_of} (default: the "
                            "input run's seed)")
