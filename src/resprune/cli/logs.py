"""How the command line shows the library's log messages (``-q`` / ``-v``).

The library logs through :mod:`logging` under the ``resprune`` logger and prints nothing
itself (progress bars aside). The CLI attaches one stderr handler to that logger, prefixing
each message with the part of resprune it comes from (``implode: step 2: ...``); ``-q``
shows warnings and errors only, ``-v`` adds debug messages. A library user configures the
``resprune`` logger like any other (``logging.basicConfig(level=logging.INFO)``).
"""

from __future__ import annotations

import logging
import sys

# logger name -> prefix on the command line ("" for the CLI's own messages)
PREFIXES = {"resprune.implosion": "implode", "resprune.vacl": "vacl",
            "resprune.compress": "compress", "resprune.train": "train",
            "resprune.data": "data", "resprune.cli": ""}


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = PREFIXES.get(record.name, record.name.rpartition(".")[2])
        msg = record.getMessage()
        return f"{prefix}: {msg}" if prefix else msg


class _Stderr(logging.StreamHandler):
    """A handler that writes to the *current* ``sys.stderr`` (tests and compress swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(quiet: bool = False, verbose: bool = False) -> None:
    """Route ``resprune`` log records to stderr at the level ``-q`` / ``-v`` ask for."""
    logger = logging.getLogger("resprune")
    for h in list(logger.handlers):
        if isinstance(h, _Stderr):
            logger.removeHandler(h)
    handler = _Stderr()
    handler.setFormatter(_Format())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
