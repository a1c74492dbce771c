"""Run directories: where every command writes, and how it refuses to clobber.

A run directory holds ``model.safetensors`` + ``arch.json`` (the model), ``metrics.jsonl``,
``summary.json``, ``report.md`` (+ PNG plots), and, while it can be resumed, the state files of
the command that wrote it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .io import atomic_write_json, read_json, remove, remove_tree
from .runstate import COMMAND_FILE, STATE_FILES, TRAIN_STATE_FILE

SUMMARY_FILE = "summary.json"
STATE_FILE = TRAIN_STATE_FILE
# Everything resprune writes in a run directory; --overwrite removes exactly these.
RUN_FILES = ("model.safetensors", "arch.json", "metrics.jsonl", SUMMARY_FILE, "report.md",
             COMMAND_FILE, *STATE_FILES)
RUN_DIRS = ("plots", "stages", "steps", "work")


def is_run(path: Path) -> bool:
    return any((path / name).is_file() for name in ("arch.json", SUMMARY_FILE, COMMAND_FILE,
                                                    *STATE_FILES))


def prepare_out(out: str | os.PathLike, *, overwrite: bool = False, resume: bool = False,
                source: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """Check ``--out`` and return ``(path, resuming)``.

    An existing non-empty directory is only used with ``--resume`` (continue it) or
    ``--overwrite`` (its resprune files are removed first). A run killed inside its very first
    write left only temporary files: ``--resume`` removes them and starts it afresh
    (``resuming`` is then False). Nothing else is ever deleted.
    """
    out = Path(out)
    if overwrite and resume:
        raise UserError("--overwrite and --resume contradict each other; pass one of them")
    if source is not None and out.resolve() == Path(source).resolve():
        raise UserError(f"--out {out} is the input run; write the result to a new directory")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    nonempty = out.is_dir() and any(out.iterdir())
    if resume:
        if not nonempty:
            raise UserError(f"nothing to resume in {out}; start the run without --resume")
        leftovers = list(out.iterdir())
        if all(p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp")
               for p in leftovers):
            # killed inside its very first write: nothing was saved, so start afresh
            remove(*leftovers)
            return out, False
        return out, True
    if nonempty:
        if not overwrite:
            raise UserError(f"--out {out} is not empty; pass --overwrite to replace the run "
                            "in it or --resume to continue it")
        if not is_run(out):
            raise UserError(f"--out {out} holds files that are not a resprune run; "
                            "choose another directory")
        remove(*(out / name for name in RUN_FILES), *out.glob("*.png"))
        for name in RUN_DIRS:
            remove_tree(out / name)
    out.mkdir(parents=True, exist_ok=True)
    return out, False


def read_summary(run_dir: str | os.PathLike,
                 kinds: tuple[str, ...] | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    if not (run_dir / SUMMARY_FILE).is_file():
        raise UserError(f"{run_dir} is not a finished resprune run (no {SUMMARY_FILE}); "
                        "pass a directory written by a resprune command")
    summary = read_json(run_dir / SUMMARY_FILE, "summary file")
    if not isinstance(summary, dict):
        raise UserError(f"{run_dir / SUMMARY_FILE} is not a resprune summary")
    if kinds is not None and summary.get("kind") not in kinds:
        raise UserError(f"{run_dir} is a '{summary.get('kind')}' run; this command needs a "
                        f"run of kind {' or '.join(kinds)}")
    return summary


def write_summary(run_dir: str | os.PathLike, summary: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / SUMMARY_FILE, summary)


def default_input_shape(spec: dict[str, Any]) -> list[int]:
    size = 224 if spec.get("stem") == "imagenet" else 32
    return [int(spec.get("in_channels", 3)), size, size]


def input_shape_of(run_dir: str | os.PathLike, spec: dict[str, Any]) -> list[int]:
    """The model's input shape: its preprocessing, else the shape it was trained on
    (summary.json), else the family's default."""
    pre = spec.get("preprocess")
    if isinstance(pre, dict) and isinstance(pre.get("input_size"), int):
        return [int(spec.get("in_channels", 3)), pre["input_size"], pre["input_size"]]
    path = Path(run_dir) / SUMMARY_FILE
    if path.is_file():
        shape = read_json(path, "summary file").get("input_shape")
        if isinstance(shape, list) and len(shape) == 3:
            return [int(s) for s in shape]
    return default_input_shape(spec)
