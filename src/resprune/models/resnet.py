"""One residual-network builder for every zoo family, driven by a JSON architecture spec.

The spec (see ``docs/architecture.md``) lists every unit of every stage with its channel
counts, its shortcut kind ("identity", "conv" = 1x1 conv + BN, or ``{"pad": index}`` for a
zero-padding shortcut with an explicit channel map), whether it carries a priority gate, and
whether it was erased by Network Implosion (``{"erased": true}``: the unit is an identity, has
no weights, and keeps its place so every other unit keeps its name).

:meth:`ResNet.spec` reads the spec back from the modules themselves, so a model whose layers
were pruned in place reports its new architecture, and ``build(model.spec())`` rebuilds it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .blocks import BasicBlock, Bottleneck, PadShortcut, ResidualUnit, conv3x3, projection
from .preprocess import validate_preprocess

SPEC_FORMAT = 1


class ResNet(nn.Module):
    """Stem -> stages ``layer1..layerN`` -> global average pool -> ``fc`` (torchvision names)."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        spec = validate_spec(spec)
        self.arch = spec["arch"]
        self.stem_kind = spec["stem"]
        self.block_kind = spec["block"]
        self.groups = spec["groups"]
        # how inputs must be prepared (see models/preprocess.py); None: the dataset's defaults
        self.preprocess: dict[str, Any] | None = spec.get("preprocess")
        cin, width = spec["in_channels"], spec["stem_width"]
        if self.stem_kind == "imagenet":
            self.conv1 = nn.Conv2d(cin, width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool2d(3, stride=2, padding=1) if self.stem_kind == "imagenet"
                        else nn.Identity())
        self.num_stages = len(spec["stages"])
        for s, units in enumerate(spec["stages"]):
            self.add_module(f"layer{s + 1}", nn.Sequential(*[self._unit(u) for u in units]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(spec["stages"][-1][-1]["out"], spec["num_classes"])
        self._init_weights()

    # -- construction -------------------------------------------------------------------
    def _unit(self, u: dict[str, Any]) -> nn.Module:
        if u.get("erased"):
            return nn.Identity()
        sc = u["shortcut"]
        if sc == "identity":
            down = None
        elif sc == "conv":
            down = projection(u["in"], u["out"], u["stride"])
        else:
            down = PadShortcut(u["in"], sc["pad"], u["stride"])
        gate = bool(u.get("gate", False))
        if self.block_kind == "basic":
            (mid,) = u["widths"]
            return BasicBlock(u["in"], mid, u["out"], u["stride"], down, gate)
        w1, w2 = u["widths"]
        return Bottleneck(u["in"], w1, w2, u["out"], u["stride"], self.groups, down, gate)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- structure ----------------------------------------------------------------------
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{s + 1}") for s in range(self.num_stages)]

    def units(self) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` of every unit slot, erased ones (``nn.Identity``) included."""
        return [(f"layer{s + 1}.{i}", m) for s, st in enumerate(self.stages())
                for i, m in enumerate(st)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))

    def spec(self) -> dict[str, Any]:
        """The architecture spec, read from the modules as they are now."""
        stages = []
        width = self.conv1.out_channels
        for stage in self.stages():
            units = []
            for m in stage:
                if isinstance(m, nn.Identity):
                    units.append({"erased": True, "in": width, "out": width})
                    continue
                units.append(_unit_spec(m))
                width = units[-1]["out"]
            stages.append(units)
        spec = {
            "format": SPEC_FORMAT,
            "arch": self.arch,
            "stem": self.stem_kind,
            "in_channels": self.conv1.in_channels,
            "stem_width": self.conv1.out_channels,
            "block": self.block_kind,
            "groups": self.groups,
            "num_classes": self.fc.out_features,
            "stages": stages,
        }
        if self.preprocess is not None:
            spec["preprocess"] = copy.deepcopy(self.preprocess)
        return spec


def _unit_spec(m: ResidualUnit) -> dict[str, Any]:
    if isinstance(m, BasicBlock):
        cin, widths, cout = m.conv1.in_channels, [m.conv1.out_channels], m.conv2.out_channels
    elif isinstance(m, Bottleneck):
        cin, cout = m.conv1.in_channels, m.conv3.out_channels
        widths = [m.conv1.out_channels, m.conv2.out_channels]
    else:
        raise UserError(f"cannot describe unit of type {type(m).__name__} in an architecture spec")
    if m.downsample is None:
        shortcut: Any = "identity"
    elif isinstance(m.downsample, PadShortcut):
        shortcut = {"pad": m.downsample.index}
    else:
        shortcut = "conv"
    u = {"in": cin, "widths": widths, "out": cout, "stride": m.stride, "shortcut": shortcut}
    if m.gate is not None:
        u["gate"] = True
    return u


def _fail(msg: str) -> None:
    raise UserError(f"invalid architecture spec: {msg}")


def _int(v: Any, what: str, minimum: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        _fail(f"{what} must be an integer >= {minimum}, got {v!r}")
    return v


def validate_spec(spec: Any) -> dict[str, Any]:
    """Check a spec for consistency; raise :class:`UserError` naming the first problem."""
    if not isinstance(spec, dict):
        _fail("expected a JSON object")
    spec = copy.deepcopy(spec)
    if spec.get("format") != SPEC_FORMAT:
        _fail(f"unsupported format {spec.get('format')!r} (this resprune reads {SPEC_FORMAT})")
    for key in ("arch", "stem", "in_channels", "stem_width", "block", "groups", "num_classes",
                "stages"):
        if key not in spec:
            _fail(f"missing key {key!r}")
    if spec["stem"] not in ("cifar", "imagenet"):
        _fail(f"stem must be 'cifar' or 'imagenet', got {spec['stem']!r}")
    if spec["block"] not in ("basic", "bottleneck"):
        _fail(f"block must be 'basic' or 'bottleneck', got {spec['block']!r}")
    for key in ("in_channels", "stem_width", "groups", "num_classes"):
        _int(spec[key], key)
    if spec.get("preprocess") is not None:
        spec["preprocess"] = validate_preprocess(spec["preprocess"], spec["in_channels"])
    stages = spec["stages"]
    if not isinstance(stages, list) or not stages or not all(
            isinstance(s, list) and s for s in stages):
        _fail("stages must be a non-empty list of non-empty unit lists")
    nwidths = 1 if spec["block"] == "basic" else 2
    width = spec["stem_width"]
    for s, units in enumerate(stages):
        for i, u in enumerate(units):
            name = f"layer{s + 1}.{i}"
            if not isinstance(u, dict):
                _fail(f"{name} must be an object")
            if _int(u.get("in"), f"{name}.in") != width:
                _fail(f"{name}.in is {u['in']} but the previous layer gives {width} channels")
            _int(u.get("out"), f"{name}.out")
            if u.get("erased"):
                if u["out"] != u["in"]:
                    _fail(f"erased unit {name} must keep its width")
                continue
            _int(u.get("stride"), f"{name}.stride")
            widths = u.get("widths")
            if not isinstance(widths, list) or len(widths) != nwidths:
                _fail(f"{name}.widths must list {nwidths} channel count(s)")
            for w in widths:
                _int(w, f"{name}.widths")
            if spec["block"] == "bottleneck" and spec["groups"] > 1:
                for w in widths:
                    if w % spec["groups"]:
                        _fail(f"{name}: width {w} is not divisible by groups={spec['groups']}")
            sc = u.get("shortcut")
            if sc == "identity":
                if u["in"] != u["out"] or u["stride"] != 1:
                    _fail(f"{name}: an identity shortcut needs in == out and stride 1")
            elif isinstance(sc, dict) and isinstance(sc.get("pad"), list):
                idx = sc["pad"]
                if len(idx) != u["out"] or any(
                        not isinstance(k, int) or k < -1 or k >= u["in"] for k in idx):
                    _fail(f"{name}: pad index must list {u['out']} entries in [-1, {u['in']})")
            elif sc != "conv":
                _fail(f"{name}.shortcut must be 'identity', 'conv' or {{'pad': [...]}}")
            width = u["out"]
    return spec


def build(spec: dict[str, Any]) -> ResNet:
    """Build a freshly initialised model from an architecture spec."""
    return ResNet(spec)


def spec_of(model: nn.Module) -> dict[str, Any]:
    """The architecture spec of a resprune model (see :func:`build`)."""
    if not isinstance(model, ResNet):
        raise UserError(f"{type(model).__name__} is not a resprune model; build it with "
                        "resprune.models.create() or load a run with resprune.load()")
    return model.spec()
