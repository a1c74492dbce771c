"""Preprocessing that travels with a model: input size, channel mean/std, eval resize.

A model only gives its published accuracy on inputs prepared the way it was trained on
(akamaster's CIFAR ResNets use the ImageNet mean/std, resprune's own CIFAR runs the CIFAR
statistics, torchvision's ImageNet models resize to 256 and crop 224). The architecture spec
therefore carries an optional ``"preprocess"`` entry::

    {"input_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "resize": null}

``input_size`` is the square side the network sees; ``resize`` (large images only) the size
the shorter side is resized to before the central ``input_size`` crop at evaluation. Images
are scaled to [0, 1] before ``(x - mean) / std``. A spec without the entry (runs written
before it existed) uses the dataset's defaults, exactly as before.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_preprocess(input_size: int, mean, std, resize: int | None = None) -> dict[str, Any]:
    """A validated ``preprocess`` entry (lists of floats, ints), ready for ``arch.json``."""
    pre = {"input_size": input_size, "mean": [float(m) for m in mean],
           "std": [float(s) for s in std], "resize": resize}
    return validate_preprocess(pre)


def validate_preprocess(pre: Any, in_channels: int | None = None) -> dict[str, Any]:
    """Check a ``preprocess`` entry; raise :class:`UserError` naming the first problem."""
    def fail(msg: str) -> None:
        raise UserError(f"invalid preprocessing in the architecture spec: {msg}")

    if not isinstance(pre, dict):
        fail("expected an object with input_size, mean, std")
    unknown = sorted(set(pre) - {"input_size", "mean", "std", "resize"})
    if unknown:
        fail(f"unknown key(s) {', '.join(unknown)}")
    size = pre.get("input_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        fail(f"input_size must be a positive integer, got {size!r}")
    resize = pre.get("resize")
    if resize is not None and (not isinstance(resize, int) or isinstance(resize, bool)
                               or resize < size):
        fail(f"resize must be null or an integer >= input_size ({size}), got {resize!r}")
    for key in ("mean", "std"):
        v = pre.get(key)
        if (not isinstance(v, list) or not v
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                           and math.isfinite(x) for x in v)):
            fail(f"{key} must be a non-empty list of numbers, got {v!r}")
    if len(pre["mean"]) != len(pre["std"]):
        fail("mean and std need one value per channel")
    if any(s <= 0 for s in pre["std"]):
        fail("std values must be > 0")
    if in_channels is not None and len(pre["mean"]) != in_channels:
        fail(f"mean/std have {len(pre['mean'])} values but the model takes {in_channels} "
             "channels")
    return {"input_size": size, "mean": [float(x) for x in pre["mean"]],
            "std": [float(x) for x in pre["std"]], "resize": resize}


def describe(pre: dict[str, Any] | None) -> str:
    """One line for logs and reports."""
    if not pre:
        return "the dataset's defaults"
    mean = ", ".join(f"{m:.4g}" for m in pre["mean"])
    std = ", ".join(f"{s:.4g}" for s in pre["std"])
    size = f"{pre['input_size']} px" + (f" (resize {pre['resize']}, center crop)"
                                          if pre.get("resize") else "")
    return f"{size}, mean ({mean}), std ({std})"
