"""The report of a training run (``resprune train``, a pipeline's fine-tuning stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from . import data_name, fmt_acc, fmt_count, markdown_table
from .plots import training_curves


def write_report(out: Path, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
    lines = [f"# Training run: {summary['model']} on {data_name(summary)}\n",
             markdown_table(["params", "MACs", "depth (weight layers)", "val top-1",
                             "test top-1", "epochs", "seconds"],
                            [[fmt_count(summary["params"]), fmt_count(summary["macs"]),
                              summary["depth"], fmt_acc(summary.get("val_top1")),
                              fmt_acc(summary.get("top1")), summary["epochs"],
                              summary["seconds"]]]),
             "MACs are multiply-accumulates of convolutions and linear layers for one image "
             f"of shape {summary['input_shape']}.\n"]
    if history:
        training_curves(history, out / "training.png", title=summary["model"])
        lines.append("![training curves](training.png)\n")
    atomic_write_text(out / "report.md", "\n".join(lines))
