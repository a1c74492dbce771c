"""The ``resprune`` command line.

Every subcommand takes ``--config FILE`` (YAML; flags win). Bad input ends with one line on
stderr, ``resprune: error: ...``, and exit status 2, with nothing on disk overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys

from .. import __version__, distributed
from ..errors import UserError
from . import logs
from .config import apply_config, as_yaml, restore_held


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see '{self.prog} --help')")




def build_parser() -> Parser:
    from . import compress, demo, evaluate, export, implode, importer, profile, report, train, vacl

    parser = Parser(prog="resprune", description="Prune trained residual networks: depth "
                    "(Network Implosion) and width (VACL), measured honestly.",
                    epilog="Several GPUs or machines: torchrun --nproc-per-node N -m resprune "
                    "COMMAND ... (--batch-size is then the global batch; see docs/scaling.md).")
    parser.add_argument("--version", action="version", version=f"resprune {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subs.required = True
    for mod in (importer, train, implode, vacl, compress, evaluate, profile, export, report,
                demo):
        mod.add_parser(subs)
    for name, sub in subs.choices.items():
        sub.set_defaults(_parser=sub, command=name)
        g = sub.add_argument_group("messages")
        g.add_argument("-q", "--quiet", action="store_true",
                       help="show only warnings and errors (progress bars stay; see "
                            "--no-progress)")
        g.add_argument("-v", "--verbose", action="store_true", help="show debug messages too")
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    held: dict = {}  # the config file's budget, applied unless the command line gives one
    if command in subs.choices:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        known, _ = pre.parse_known_args(argv[argv.index(command) + 1:])
        if known.config:
            held = apply_config(subs.choices[command], known.config)
    if "--print-config" in argv and command in subs.choices:  # prints, runs nothing
        for action in subs.choices[command]._actions:
            action.required = False
    args = parser.parse_args(argv)
    restore_held(args, held)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command. Under torchrun every process runs it (:mod:`resprune.distributed`);
    rank 0 alone prints, logs and shows progress, the others say only their errors."""
    try:
        args = parse(argv)
        if getattr(args, "print_config", False):
            print(as_yaml(args), end="")
            return 0
        started = distributed.setup(getattr(args, "device", None))
        main_rank = distributed.is_main()
        logs.configure(quiet=getattr(args, "quiet", False) or not main_rank,
                       verbose=getattr(args, "verbose", False) and main_rank)
        if not main_rank:
            logging.getLogger("resprune").setLevel(logging.ERROR)
            args.no_progress = True
        with contextlib.redirect_stdout(sys.stdout if main_rank else io.StringIO()):
            try:
                return int(args.func(args) or 0)
            finally:
                if started:
                    distributed.teardown()
    except UserError as e:
        print(f"resprune: error: {_who()}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resprune: interrupted; rerun the same command with --resume to continue",
              file=sys.stderr)
        return 130


def _who() -> str:
    """``rank R: `` under torchrun (every process may report its own error), else nothing."""
    import os

    return f"rank {os.environ['RANK']}: " if distributed.launched() and "RANK" in os.environ \
        else ""


if __name__ == "__main__":
    sys.exit(main())
