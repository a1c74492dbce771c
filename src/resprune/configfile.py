"""YAML config files in Python: :func:`read_config` turns a ``--config`` file into the options
object of :func:`resprune.compress`, :func:`resprune.run_vacl`, :func:`resprune.run_implosion`
or :func:`resprune.train.train`.

The file is read by the command line's own parser (:mod:`resprune.cli.config`): the same keys,
types, checks, defaults and error lines, so a recipe behaves alike from a shell and from Python.
What the Python call takes as arguments instead of options (the data, the teacher) comes back
beside the config: :attr:`FileConfig.data` and :meth:`FileConfig.distillation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .errors import UserError

COMMANDS = ("compress", "vacl", "implode", "train")


@dataclass(frozen=True)
class FileConfig:
    """A config file read for one command: its options object and what the call takes
    besides it."""

    command: str
    config: Any  # CompressConfig, VaclConfig, ImplosionConfig or TrainConfig
    data: dict[str, Any] = field(default_factory=dict)  # the file's data options (None: unset)
    distill_from: str | None = None  # "input", a run directory, or None
    distill_alpha: float = 0.7
    distill_temperature: float = 4.0
    distill_attention: float = 0.0
    distill_features: float = 0.0

    def distillation(self, model: nn.Module):
        """The teacher the file asks for: ``distill-from: input`` -> a frozen copy of ``model``
        (the unpruned input, taken before the call changes it), a run directory -> that run's
        model, none -> ``None``. Pass it as ``distill=``."""
        from .checkpoint import load
        from .train import Distillation

        if self.distill_from in (None, "none"):
            return None
        teacher = model if self.distill_from == "input" else load(self.distill_from)
        return Distillation(teacher, self.distill_alpha, self.distill_temperature,
                            self.distill_attention, self.distill_features)  # a copy


def read_config(path: str | Path, command: str = "compress") -> FileConfig:
    """Read the YAML config ``path`` as ``resprune COMMAND --config PATH`` would.

    Unknown keys, values of the wrong type and option combinations the command refuses raise
    :class:`~resprune.errors.UserError` with the command line's message. Options left out of the
    file take the command's defaults; ``seed`` defaults to 0 (the command line would take the
    input run's). A ``compress`` file with ``model`` starts with the ``train`` stage.
    """
    from .cli import common
    from .cli.compress import compress_config, plan
    from .cli.implode import implosion_config
    from .cli.main import parse
    from .cli.vacl import vacl_config

    if command not in COMMANDS:
        raise UserError(f"read_config: command must be one of {', '.join(COMMANDS)}, got "
                        f"{command!r}")
    run = [] if command in ("compress", "train") else ["RUN"]  # placeholders, never opened
    args = parse([command, *run, "--config", str(path), "--out", "OUT"])
    if args.seed is None:
        args.seed = 0
    if command == "compress":
        if args.model is None:
            args.run = "RUN"
        config = compress_config(args, plan(args))
    elif command == "vacl":
        config = vacl_config(args)
    elif command == "implode":
        config = implosion_config(args)
    else:
        config = common.train_config(args)
    return FileConfig(command=command, config=config,
                      data=_data_options(args),
                      distill_from=getattr(args, "distill_from", None),
                      distill_alpha=getattr(args, "distill_alpha", 0.7),
                      distill_temperature=getattr(args, "distill_temperature", 4.0),
                      distill_attention=getattr(args, "distill_attention", 0.0),
                      distill_features=getattr(args, "distill_features", 0.0))


def _data_options(args) -> dict[str, Any]:
    """The command's ``data`` option group (``--data``, ``--data-dir``, ...) as parsed: in
    Python they describe the data the caller loads."""
    group = next(g for g in args._parser._action_groups if g.title == "data")
    return {a.dest: getattr(args, a.dest) for a in group._group_actions}
