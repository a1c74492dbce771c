"""YAML configs for the command line: every option can come from ``--config FILE``.

Keys are option names with dashes or underscores (``retrain-epochs`` or ``retrain_epochs``).
Values from the file become the parser's defaults, so flags given on the command line win.
Options that exclude each other (the budget: ``--target-params-reduction``,
``--target-macs-reduction``, ..., ``--threshold``) win as a family: one given on the command
line replaces the file's, so ``--target-macs-reduction`` overrides a file's
``target-params-reduction`` instead of clashing with it.
Unknown keys and values of the wrong type are errors, never silently ignored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError

INTERNAL = {"func", "command", "config", "_parser", "print_config"}


def _exclusive() -> tuple[str, ...]:
    from ..vacl.config import RULES

    return RULES  # the budget: one of them, or the params and MACs targets together


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value")
    return data


def _coerce(action: argparse.Action, key: str, value: Any, path: Path) -> Any:
    where = f"config file {path}: option {key!r}"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        if isinstance(action, argparse._StoreFalseAction):
            return not value
        return value
    if action.nargs in ("*", "+") or isinstance(action.nargs, int):
        items = value if isinstance(value, list) else [value]
        return [_coerce_one(action, where, v) for v in items]
    return _coerce_one(action, where, value)


def _coerce_one(action: argparse.Action, where: str, value: Any) -> Any:
    if value is None:
        return None
    typ = action.type
    if typ is not None and callable(typ):
        if typ in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                    and not isinstance(value, str)):
            raise UserError(f"{where} must be a number, got {value!r}")
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise UserError(f"{where} must be an integer, got {value!r}")
        try:
            value = typ(value) if not isinstance(value, typ if isinstance(typ, type) else ()) \
                else value
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise UserError(f"{where}: {e}") from None
    elif not isinstance(value, (str, int, float)):
        raise UserError(f"{where} must be a single value, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{where} must be one of {', '.join(map(str, action.choices))}, "
                        f"got {value!r}")
    return value


def apply_config(sub: argparse.ArgumentParser, path: str | Path) -> dict[str, Any]:
    """Set ``sub``'s defaults from a YAML file (validated against ``sub``'s options).

    The file's values of mutually exclusive options (the budget) are held back, not made
    defaults: :func:`restore_held` puts them in after parsing unless the command line gave
    one of that family. Returns them."""
    path = Path(path)
    data = load_yaml(path)
    actions = {a.dest: a for a in sub._actions if a.dest not in ("help",)}
    defaults = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest in INTERNAL or dest not in actions:
            raise UserError(f"config file {path}: unknown option {key!r} for '{sub.prog}' "
                            f"(see '{sub.prog} --help')")
        defaults[dest] = _coerce(actions[dest], str(key), value, path)
        actions[dest].required = False  # the file supplies it
    held = {k: v for k, v in defaults.items() if k in _exclusive()}
    sub.set_defaults(**{k: v for k, v in defaults.items() if k not in held})
    return held


def restore_held(args: argparse.Namespace, held: dict[str, Any]) -> None:
    """Give ``args`` the file's budget (``held`` by :func:`apply_config`) unless the command
    line chose one; when it did, and so dropped a target the file set, say so on stderr."""
    given = [k for k in _exclusive() if getattr(args, k, None) is not None]
    if held and not given:
        for k, v in held.items():
            setattr(args, k, v)
    dropped = {k: v for k, v in held.items() if given and k not in given}
    if dropped:
        file_budget = ", ".join(f"{_flag(k)[2:]} {v}" for k, v in dropped.items())
        print(f"resprune: note: the command line's budget ({', '.join(map(_flag, given))}) "
              f"replaces the config file's ({file_budget}); to keep both, give "
              f"{' and '.join(map(_flag, [*dropped, *given]))} on the command line",
              file=sys.stderr)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def resolved(args: argparse.Namespace) -> dict[str, Any]:
    """The options a command ran with (after config file and flags), JSON-ready."""
    out = {}
    for k, v in vars(args).items():
        if k in INTERNAL or k.startswith("_"):
            continue
        out[k] = str(v) if isinstance(v, Path) else v
    return out


# run control, modes and messages: how a command runs, not what it computes (not printed)
RUN_CONTROL = {"out", "overwrite", "resume", "json", "no_progress", "quiet", "verbose", "plan",
               "plan_recalibrate"}


def as_yaml(args: argparse.Namespace) -> str:
    """The options of ``args`` as a YAML config file that gives the same options back
    (``--print-config``): the :func:`resolved` options in the parser's order, dashed keys,
    without the positional arguments, run control (output, resume, messages) and unset
    (None) options."""
    values = resolved(args)
    body = {}
    for action in args._parser._actions:
        value = values.get(action.dest)
        if action.option_strings and action.dest not in RUN_CONTROL and value is not None:
            body[action.dest.replace("_", "-")] = list(value) if isinstance(value, tuple) \
                else value
    header = (f"# resprune {args.command}: the options of this command line "
              "(resprune ... --config FILE)\n")
    return header + (yaml.safe_dump(body, sort_keys=False, default_flow_style=False)
                     if body else "")
