"""Option groups shared by the subcommands (one definition per option).

The options of the library's configs are generated from their dataclass fields
(:func:`add_fields`; type, range, default and help come from :mod:`resprune.fields`); the
options here by hand are the command line's own (input, output, data loading).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from typing import Any

from ..fields import Check, Choice, Flag, Float, Floats, Int, spec
from ..vacl.config import RoundTo


def _converter(check: Check):
    """argparse ``type`` of a field: text is parsed, YAML values (already typed) checked
    (a list field's type converts one item)."""
    if isinstance(check, Floats):
        check = check.item()

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return check.parse(value)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        reason = check.check(value, "value")
        if reason:
            raise argparse.ArgumentTypeError(reason.removeprefix("value "))
        return float(value) if isinstance(check, Float) else value
    convert.__name__ = type(check).__name__.lower()
    return convert


# the argparse types of the command line's own options
positive_int = _converter(Int(1))
nonneg_int = _converter(Int(0))
finite_float = _converter(Float())
positive_float = _converter(Float(0, open_low=True))
nonneg_float = _converter(Float(0))
fraction = _converter(Float(0, 1, open_high=True))
multiple_or_auto = _converter(RoundTo())  # a channel multiple >= 1, or auto


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="YAML file of options (keys = option names); command-line flags win")
    p.add_argument("--print-config", action="store_true",
                   help="print the options the command would run with (config file and flags "
                        "merged) as a YAML config file, and exit without running")


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
                        "imagefolder: the folder holding train/ and test/ or val/; with "
                        "both test/ and val/, val/ is the validation split)")
    g.add_argument("--download", action="store_true",
                   help="download CIFAR into --data-dir if it is missing (needs a network)")
    g.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="fraction of the training set held out as the validation split that "
                        "every decision uses (default 0.1; unused when an image folder "
                        "has val/ beside test/)")
    g.add_argument("--workers", type=nonneg_int, default=0,
                   help="image folders: DataLoader workers for large images (default 0 = in "
                        "the main process); processes decoding small images (0 = all cores)")
    g.add_argument("--in-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="image folders: decode all images once into memory and cache them "
                        "(default: when images are at most 64 px)")
    g.add_argument("--cache-dir", metavar="DIR",
                   help="where decoded small-image folders are cached (default "
                        "$RESPRUNE_CACHE_DIR or ~/.cache/resprune)")


def _shown(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return " ".join(_shown(x) for x in v)
    return "on" if v is True else "off" if v is False else f"{v:g}" if isinstance(
        v, float) else str(v)


def add_fields(g, cls: type, names: Iterable[str] | None = None, *, prefix: str = "",
               defaults: dict[str, Any] | None = None, helps: dict[str, str] | None = None,
               skip: Iterable[str] = ()) -> list[str]:
    """Add ``--<prefix><field-name>`` to ``g`` for every field of the config dataclass
    ``cls`` declared with :func:`resprune.fields.opt` (or just ``names``, in that order).

    Type, range, choices, default and help come from the field; ``defaults`` / ``helps``
    override them for one command (e.g. ``--seed`` defaulting to the input run's). A flag
    field becomes ``--name`` / ``--no-name``. Returns the destinations added.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)
              if spec(f) is not None and spec(f)["cli"]}
    order = list(fields) if names is None else list(names)
    defaults, helps, skip = defaults or {}, helps or {}, set(skip)
    added = []
    for name in order:
        if name in skip:
            continue
        f, s = fields[name], spec(fields[name])
        check: Check = s["check"]
        if name in defaults:
            default = defaults[name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()
        text = helps.get(name, s["help"])
        if default is not None and "default" not in text:
            text += f" (default {_shown(default)})"
        dest = (prefix + name).replace("-", "_")
        kw: dict[str, Any] = {"dest": dest, "default": default,
                              "help": text.replace("%", "%%")}
        if isinstance(check, Flag):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(check, Choice):
            kw["choices"] = check.choices
        else:
            kw["type"] = _converter(check)
            if isinstance(check, Floats):
                kw["nargs"] = "+"
                kw["default"] = list(default)
            if s["metavar"]:
                kw["metavar"] = s["metavar"]
        g.add_argument("--" + (prefix + name).replace("_", "-"), **kw)
        added.append(dest)
    return added


def field_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values of ``cls``'s command-line fields in the parsed ``args`` (the keyword
    arguments of ``cls``; milestone lists become tuples)."""
    out = {}
    for f in dataclasses.fields(cls):
        s = spec(f)
        if s is not None and s["cli"] and hasattr(args, f.name):
            v = getattr(args, f.name)
            out[f.name] = tuple(v) if isinstance(s["check"], Floats) else v
    return out


def add_train(p: argparse.ArgumentParser, *, epochs: bool = True, title: str = "training",
              seed_of: str | None = None, helps: dict[str, str] | None = None) -> None:
    """The training options (every :class:`~resprune.train.TrainConfig` field, generated),
    ``--epoch-size``, ``--force-bf16`` and the distillation options.

    ``epochs=False`` leaves out ``--epochs`` and ``--lr``: a command whose trainings are all
    set by its own fields (``implode``'s ``--retrain-epochs``, vacl's ``--sparse-epochs``)
    has no plain ones. ``seed_of`` (e.g. "every retraining"): the command starts from an
    input run, so ``--seed`` defaults to that run's seed (None here), which reproduces its
    validation split.
    """
    from ..train import DistillConfig, TrainConfig

    g = p.add_argument_group(title)
    seed = {} if seed_of is None else {"seed": None}
    seed_help = {} if seed_of is None else {
        "seed": f"seed of the validation split and of {seed_of} (default: the input run's seed)"}
    add_fields(g, TrainConfig, skip=() if epochs else ("epochs", "lr"), defaults=seed,
               helps={**seed_help, **(helps or {})})
    g.add_argument("--epoch-size", type=positive_int, default=None, metavar="N",
                   help="training images per epoch: each epoch trains on a fresh seeded random "
                        "N of the training split (budgets below one epoch; default: all)")
    g.add_argument("--force-bf16", action="store_true",
                   help="keep --precision bf16 even on a CPU without native bf16")
    g = p.add_argument_group("distillation (every training of the command)")
    add_fields(g, DistillConfig)
