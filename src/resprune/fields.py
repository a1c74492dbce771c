"""Config fields that carry their own type, range and help: the one source of every option.

The library's config dataclasses (:class:`~resprune.train.TrainConfig`,
:class:`~resprune.implosion.ImplosionConfig`, :class:`~resprune.vacl.VaclConfig`,
:class:`~resprune.train.DistillConfig`, the own fields of
:class:`~resprune.CompressConfig`) declare each field with :func:`opt`::

    sparse_epochs: int = opt(20, "epochs of sparsity training", Int(0))

From that one declaration:

- ``Config().validate()`` checks the value (:func:`check_fields`: one :class:`UserError`
  naming the field);
- the command line gets ``--sparse-epochs`` with that type, range, default and help, and the
  YAML key ``sparse-epochs`` (or ``sparse_epochs``), checked the same way
  (:func:`resprune.cli.options.add_fields`).

A field's *check* parses command-line text (:meth:`Check.parse`, raising ``ValueError`` with a
short reason) and validates a Python value (:meth:`Check.check`). Checks that involve several
fields (e.g. warm-up at most the epochs) stay in the dataclass's ``validate``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import UserError

META = "resprune"


@dataclass(frozen=True)
class Check:
    """Base: any value (``str`` on the command line)."""

    optional: bool = dataclasses.field(default=False, kw_only=True)  # None allowed

    def convert(self, text: str) -> Any:
        """``text`` as the field's type (ValueError when it is not one)."""
        return text

    def parse(self, text: str) -> Any:
        """Command-line text to a checked value; ValueError with the reason."""
        try:
            v = self.convert(text)
        except ValueError:
            raise ValueError(f"must be {self.describe()}, got {text!r}") from None
        if self.check(v) is not None:
            raise ValueError(f"must be {self.describe()}, got {text}")
        return v

    def check(self, value: Any, name: str = "value") -> str | None:
        """Why ``value`` (of the field ``name``) is bad, as one sentence; None when fine."""
        return None

    def describe(self) -> str:
        return "a value"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Float(Check):
    """A finite number, optionally bounded (``open_*``: the bound itself is excluded)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def convert(self, text: str) -> float:
        return float(text)

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.open_high else '<='} {self.high:g}")
        return "a number" + (" " + " and ".join(parts) if parts else "")

    def check(self, value: Any, name: str = "value") -> str | None:
        ok = _finite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.open_low else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.open_high else value <= self.high
        return None if ok else f"{name} must be {self.describe()}, got {value!r}"


@dataclass(frozen=True)
class Int(Check):
    """An integer >= ``low``."""

    low: int = 0

    def convert(self, text: str) -> int:
        return int(text)

    def describe(self) -> str:
        return f"an integer >= {self.low}"

    def check(self, value: Any, name: str = "value") -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < self.low:
            return f"{name} must be {self.describe()}, got {value!r}"
        return None


@dataclass(frozen=True)
class Choice(Check):
    """One of ``choices`` (strings); ``label`` names the kind in messages ("erase mode")."""

    choices: tuple[str, ...] = ()
    label: str | None = None

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)

    def check(self, value: Any, name: str = "value") -> str | None:
        return None if value in self.choices else (
            f"unknown {self.label or name} {value!r}; choose one of: {', '.join(self.choices)}")


@dataclass(frozen=True)
class Flag(Check):
    """True or false (``--name`` / ``--no-name`` on the command line)."""

    def describe(self) -> str:
        return "true or false"

    def check(self, value: Any, name: str = "value") -> str | None:
        return None if isinstance(value, bool) else (
            f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class Floats(Check):
    """A non-empty, increasing sequence of numbers in ``(low, high]``."""

    low: float = 0.0
    high: float = 1.0

    def item(self) -> Float:
        """The check of one item (the command line and YAML lists give items one by one)."""
        return Float(self.low, self.high, open_low=True)

    def parse(self, text: str) -> float:  # one item
        return self.item().parse(text)

    def describe(self) -> str:
        return f"increasing numbers in ({self.low:g}, {self.high:g}]"

    def check(self, value: Any, name: str = "value") -> str | None:
        ok = (isinstance(value, (tuple, list)) and len(value) > 0
              and all(_finite(v) and self.low < v <= self.high for v in value)
              and list(value) == sorted(value))
        return None if ok else (
            f"{name} must be {self.describe()}, e.g. [0.5, 0.75], got {value!r}")


@dataclass(frozen=True)
class Text(Check):
    """A string (a path, a run, a name)."""

    def describe(self) -> str:
        return "a string"

    def check(self, value: Any, name: str = "value") -> str | None:
        return None if isinstance(value, str) else f"{name} must be a string, got {value!r}"


def opt(default: Any = dataclasses.MISSING, help: str = "", check: Check | None = None, *,
        metavar: str | None = None, default_factory: Any = dataclasses.MISSING,
        cli: bool = True) -> Any:
    """A dataclass field with its help text and check (``cli=False``: no command-line
    option, e.g. a nested config)."""
    meta = {META: {"help": help, "check": check or Check(), "metavar": metavar, "cli": cli}}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def spec(f: dataclasses.Field) -> dict[str, Any] | None:
    """The :func:`opt` metadata of a dataclass field (None for a plain field)."""
    return f.metadata.get(META)


def check_fields(obj: Any, what: str = "") -> None:
    """Validate every :func:`opt` field of the dataclass instance ``obj``: raise
    :class:`UserError` naming the first bad one (``what`` prefixes the name)."""
    for f in dataclasses.fields(obj):
        s = spec(f)
        if s is None:
            continue
        value = getattr(obj, f.name)
        c: Check = s["check"]
        if value is None and c.optional:
            continue
        reason = c.check(value, what + f.name)
        if reason:
            raise UserError(reason)


#: a learning rate (> 0), and one that may be left unset (it then follows another)
LR = Float(0, open_low=True)
LR_OR_NONE = Float(0, open_low=True, optional=True)
