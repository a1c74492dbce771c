"""PNG plots for report.md (matplotlib, headless Agg backend)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_write_bytes  # noqa: E402


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike,
                    title: str = "training") -> None:
    """Train loss and train/val accuracy per epoch."""
    epochs = [r["epoch"] for r in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    a1.plot(epochs, [r["train_loss"] for r in history], marker=".")
    a1.set_xlabel("epoch")
    a1.set_ylabel("train loss")
    a2.plot(epochs, [100 * r["train_acc"] for r in history], marker=".", label="train")
    if any(r.get("val_acc") is not None for r in history):
        a2.plot(epochs, [None if r.get("val_acc") is None else 100 * r["val_acc"]
                         for r in history], marker=".", label="val")
    a2.set_xlabel("epoch")
    a2.set_ylabel("top-1 (%)")
    a2.legend()
    fig.suptitle(title)
    save_figure(fig, path)
