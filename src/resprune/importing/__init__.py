"""Import the models users already have: torchvision, akamaster's CIFAR ResNets, own state_dicts.

>>> import resprune
>>> model = resprune.from_state_dict("resnet56-4bfd9763.th", model="resnet56")  # preset auto
>>> model.preprocess["mean"]          # ImageNet statistics, as akamaster trained it
[0.485, 0.456, 0.406]

The file is read without executing code (:mod:`.files`), unwrapped and renamed (:mod:`.keys`)
and loaded into a zoo model with ``strict=True``; any missing or unexpected key, or a shape
that does not fit, is one :class:`~resprune.UserError` naming the first keys and the likely
fix. The model carries the preprocessing its preset names (see
:mod:`resprune.models.preprocess`), so every later command prepares inputs the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..models import ResNet, create, model_spec
from ..models.preprocess import make_preprocess
from .files import read_checkpoint, sha256_of
from .keys import PRESETS, parse_map, rename, resolve_preset, strip_prefixes, unwrap

__all__ = ["PRESETS", "ImportResult", "from_state_dict", "import_checkpoint", "read_checkpoint"]


@dataclass
class ImportResult:
    """The imported model and what the run records about its source."""

    model: ResNet
    preset: str
    source: dict[str, Any] = field(default_factory=dict)


def import_checkpoint(state_dict_or_path: Mapping[str, Any] | str | os.PathLike, model: str,
                      *, num_classes: int | None = None, preset: str = "auto",
                      key_map: Sequence[str] | Sequence[tuple[str, str]] = (),
                      preprocess: Mapping[str, Any] | None = None,
                      **zoo_options: Any) -> ImportResult:
    """Build zoo model ``model`` and load a checkpoint into it (strictly).

    ``state_dict_or_path``: a state_dict (or a dict wrapping one) or a file path.
    ``num_classes``/``in_channels`` default to the checkpoint's own (classifier and stem
    shapes). ``preset``: ``auto`` (default), ``torchvision``, ``akamaster`` or ``plain``.
    ``key_map``: extra ``OLD=NEW`` prefix renames, applied after the preset's.
    ``preprocess``: overrides of the preset's ``input_size``, ``mean``, ``std``, ``resize``.
    """
    source: dict[str, Any] = {}
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        path = Path(state_dict_or_path)
        obj, file_meta = read_checkpoint(path)
        source = {"file": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size}
        if file_meta:
            source["file_metadata"] = file_meta
    else:
        obj = state_dict_or_path
    state, meta = unwrap(obj)
    if meta:
        source["metadata"] = meta
    state = strip_prefixes(state)
    stem = model_spec(model, **{k: v for k, v in zoo_options.items()
                                if k != "in_channels"})["stem"]
    p = resolve_preset(preset, state, stem)
    rules = list(p.renames) + [r if isinstance(r, tuple) else parse_map([r])[0]
                               for r in key_map]
    state = rename(state, rules)
    net = _build(model, state, num_classes, zoo_options)
    _load_strict(net, state, model, p.name)
    net.preprocess = _preprocess(p, net, preprocess)
    source["preset"] = p.name
    return ImportResult(net, p.name, source)


def from_state_dict(state_dict_or_path: Mapping[str, Any] | str | os.PathLike,
                    model: str = "resnet56", **options: Any) -> ResNet:
    """The zoo model ``model`` with a checkpoint's weights (see :func:`import_checkpoint`)."""
    return import_checkpoint(state_dict_or_path, model, **options).model


def _build(model: str, state: dict[str, torch.Tensor], num_classes: int | None,
           zoo_options: dict[str, Any]) -> ResNet:
    fc = state.get("fc.weight")
    found = int(fc.shape[0]) if isinstance(fc, torch.Tensor) and fc.dim() == 2 else None
    if num_classes is None:
        if found is None:
            raise UserError("the checkpoint has no fc.weight (classifier), so its class count "
                            "is unknown; pass --num-classes N, or --preset/--map so that the "
                            "classifier is named fc")
        num_classes = found
    elif found is not None and found != num_classes:
        raise UserError(f"the checkpoint's classifier has {found} classes (fc.weight "
                        f"{list(fc.shape)}) but --num-classes is {num_classes}; pass "
                        f"--num-classes {found}")
    opts = dict(zoo_options)
    stem_w = state.get("conv1.weight")
    if "in_channels" not in opts and isinstance(stem_w, torch.Tensor) and stem_w.dim() == 4:
        opts["in_channels"] = int(stem_w.shape[1])
    return create(model, num_classes=num_classes, **opts)


def _load_strict(net: ResNet, state: dict[str, torch.Tensor], model: str, preset: str) -> None:
    own = net.state_dict()
    # checkpoints from PyTorch < 0.4 have no BN step counters; they do not change the output
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k].clone()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
        raise UserError(f"the checkpoint does not fit --model {model} (preset {preset}): "
                        f"{'; '.join(parts)} keys; {_hint(missing, unexpected, model)}")
    if shapes:
        k = shapes[0]
        hint = ("pass --num-classes to match the checkpoint" if k.startswith("fc.")
                else "check --model and its options (--width, --shortcut, ...)")
        raise UserError(f"the checkpoint does not fit --model {model}: {len(shapes)} tensor(s) "
                        f"have other shapes, first {k}: checkpoint {list(state[k].shape)} vs "
                        f"model {list(own[k].shape)}; {hint}")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _hint(missing: list[str], unexpected: list[str], model: str) -> str:
    if any(k.startswith("linear.") for k in unexpected):
        return "the classifier is called 'linear': use --preset akamaster (or --map linear.=fc.)"
    stems = {k.split(".")[0] for k in unexpected}
    if unexpected and not missing:
        return (f"the checkpoint has more layers than {model}: choose the --model it was "
                "trained as (e.g. a deeper ResNet)")
    if missing and not unexpected:
        return (f"the checkpoint has fewer layers than {model}: choose the --model it was "
                "trained as, or shortcut options (--shortcut A/B)")
    if stems - {"conv1", "bn1", "fc", "layer1", "layer2", "layer3", "layer4"}:
        return "its key names differ: use --preset, or --map OLD=NEW to rename key prefixes"
    return "choose the --model (and --shortcut / --width) it was trained as"


def _preprocess(p, net: ResNet, override: Mapping[str, Any] | None) -> dict[str, Any] | None:
    o = {k: v for k, v in dict(override or {}).items() if v is not None}
    unknown = sorted(set(o) - {"input_size", "mean", "std", "resize"})
    if unknown:
        raise UserError(f"unknown preprocessing option(s) {', '.join(unknown)}")
    size = o.get("input_size", p.input_size)
    mean, std = o.get("mean", p.mean), o.get("std", p.std)
    if size is None and mean is None and std is None:
        return None  # plain: the data the model is first used with decides
    if size is None:
        size = 224 if net.stem_kind == "imagenet" else 32
    if mean is None or std is None:
        raise UserError("give both --mean and --std (one value per channel)")
    c = net.conv1.in_channels
    if len(mean) == 1 and c > 1:
        mean, std = list(mean) * c, list(std) * c
    resize = o.get("resize", p.resize if size == p.input_size else None)
    if resize is None and net.stem_kind == "imagenet" and size > 64:
        resize = round(size * 256 / 224)
    pre = make_preprocess(int(size), mean, std, resize)
    if len(pre["mean"]) != c:
        raise UserError(f"--mean/--std have {len(pre['mean'])} values but the model takes "
                        f"{c} channels")
    return pre
