"""From whatever a checkpoint holds to a state_dict with resprune's (torchvision's) names.

1. :func:`unwrap`: find the state_dict inside ``{'state_dict': ...}``, ``{'model': ...}``,
   ``{'model_state_dict': ...}`` (nested wrappers too) and keep the other plain entries as
   metadata (akamaster's ``best_prec1``, an ``epoch``);
2. :func:`strip_prefixes`: drop ``module.`` (DataParallel / DDP) and ``_orig_mod.``
   (torch.compile), wherever they occur in a key;
3. :data:`PRESETS`: each names where a checkpoint family comes from, its key renames and the
   preprocessing its models were trained with; ``--map OLD=NEW`` rules come after them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UserError
from ..models.preprocess import IMAGENET_MEAN, IMAGENET_STD

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class Preset:
    """A checkpoint family: key renames (applied as prefix rules) and its preprocessing."""

    name: str
    renames: tuple[tuple[str, str], ...]
    input_size: int | None       # None: keep the dataset's defaults
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    resize: int | None
    about: str


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("torchvision", (), 224, IMAGENET_MEAN, IMAGENET_STD, 256,
           "torchvision ResNet/ResNeXt state_dicts: names as they are; ImageNet mean/std, "
           "resize 256, center crop 224"),
    Preset("akamaster", (("linear.", "fc."),), 32, IMAGENET_MEAN, IMAGENET_STD, None,
           "akamaster/pytorch_resnet_cifar10 (ResNet-20...1202, option-A shortcuts): "
           "classifier 'linear' -> 'fc'; ImageNet mean/std on 32x32 images"),
    Preset("plain", (), None, None, None, None,
           "resprune/torchvision names as they are; preprocessing from the data (or "
           "--mean/--std/--input-size)"),
)}


def unwrap(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` of a loaded checkpoint object."""
    meta: dict[str, Any] = {}
    for _ in range(4):  # wrappers may nest: {'model': {'state_dict': ...}}
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}, meta
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        meta.update({str(k): v for k, v in obj.items()
                     if k != inner and isinstance(v, (int, float, str, bool))})
        obj = obj[inner]
    kind = type(obj).__name__
    if isinstance(obj, Mapping):
        tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
        keys = ", ".join(map(str, list(obj)[:5]))
        raise UserError(f"no state_dict found in the checkpoint: a {kind} with keys {keys} "
                        f"({tensors} tensors); expected a state_dict or one wrapped as "
                        f"{{'state_dict': ...}}, {{'model': ...}} or {{'model_state_dict': ...}}")
    raise UserError(f"the checkpoint holds a {kind}, not a state_dict; save "
                    "model.state_dict() and import that")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for p in PREFIXES:
            k = k.replace(p, "") if k.startswith(p) or f".{p}" in k else k
        out[k] = v
    return out


def parse_map(rules: Sequence[str]) -> list[tuple[str, str]]:
    """``["linear.=fc.", ...]`` -> ``[("linear.", "fc."), ...]``."""
    out = []
    for r in rules:
        old, sep, new = str(r).partition("=")
        if not sep or not old:
            raise UserError(f"--map rule {r!r} must look like OLD=NEW (a key prefix to rename, "
                            "e.g. linear.=fc.)")
        out.append((old, new))
    return out


def rename(state: dict[str, torch.Tensor],
           rules: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Apply prefix rules in order: a key starting with OLD gets NEW instead."""
    out = {}
    for k, v in state.items():
        for old, new in rules:
            if k.startswith(old):
                k = new + k[len(old):]
        if k in out:
            raise UserError(f"two checkpoint keys both become {k!r} after renaming; check "
                            "the --map rules")
        out[k] = v
    return out


def resolve_preset(name: str, state: dict[str, torch.Tensor], stem: str) -> Preset:
    """``auto``: akamaster when the classifier is called ``linear``, torchvision for ImageNet
    models, plain otherwise."""
    if name == "auto":
        if "linear.weight" in state:
            return PRESETS["akamaster"]
        return PRESETS["torchvision" if stem == "imagenet" else "plain"]
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose auto, {', '.join(PRESETS)}")
    return PRESETS[name]
