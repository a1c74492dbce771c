"""Named architectures (a registry of spec factories) and :func:`create`.

Names follow torchvision where the architecture is torchvision's (``resnet50``,
``resnext50_32x4d``) and the CIFAR literature otherwise (``resnet56``, ``resnext29``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UserError
from .blocks import PadShortcut
from .resnet import SPEC_FORMAT, ResNet, build

_REGISTRY: dict[str, tuple[Callable[..., dict[str, Any]], str]] = {}


def register(name: str, doc: str):
    def deco(fn):
        _REGISTRY[name] = (fn, doc)
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY, key=lambda n: (n.rstrip("0123456789x_d"), len(n), n))


def describe_models() -> dict[str, str]:
    return {n: _REGISTRY[n][1] for n in list_models()}


def model_spec(name: str, num_classes: int = 10, **options: Any) -> dict[str, Any]:
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    fn, _ = _REGISTRY[name]
    try:
        return fn(num_classes=num_classes, **options)
    except TypeError as e:
        raise UserError(f"bad option for model {name!r}: {e}") from None


def create(name: str, num_classes: int = 10, **options: Any) -> ResNet:
    """Build a zoo model, e.g. ``create("resnet56", num_classes=10, shortcut="A")``.

    Common options: ``in_channels`` (3), ``gates`` (False: add Network Implosion priority gates
    to every erasable unit). CIFAR ResNets: ``shortcut`` ("A" zero padding, default, or "B"
    1x1 conv + BN), ``width`` (first-stage width, 16). ResNeXt-29: ``cardinality`` (8),
    ``base_width`` (64).
    """
    return build(model_spec(name, num_classes=num_classes, **options))


def _spec(arch: str, stem: str, in_channels: int, stem_width: int, block: str, groups: int,
          num_classes: int, stages: list[list[dict[str, Any]]]) -> dict[str, Any]:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    return {"format": SPEC_FORMAT, "arch": arch, "stem": stem, "in_channels": in_channels,
            "stem_width": stem_width, "block": block, "groups": groups,
            "num_classes": num_classes, "stages": stages}


def _shortcut(cin: int, cout: int, stride: int, kind: str) -> Any:
    if cin == cout and stride == 1:
        return "identity"
    if kind == "A":
        return {"pad": PadShortcut.default_index(cin, cout)}
    return "conv"


def _stages(stem_width: int, plan: list[tuple[int, int, list[int], int]], shortcut: str,
            gates: bool) -> list[list[dict[str, Any]]]:
    """plan: (num_units, out_width, inner widths, stride) per stage."""
    stages, cin = [], stem_width
    for n, cout, widths, stride in plan:
        units = []
        for i in range(n):
            st = stride if i == 0 else 1
            sc = _shortcut(cin, cout, st, shortcut)
            u = {"in": cin, "widths": list(widths), "out": cout, "stride": st, "shortcut": sc}
            if gates and sc == "identity":
                u["gate"] = True
            units.append(u)
            cin = cout
        stages.append(units)
    return stages


def _cifar_resnet(depth: int):
    def fn(num_classes: int = 10, shortcut: str = "A", width: int = 16, in_channels: int = 3,
           gates: bool = False) -> dict[str, Any]:
        if shortcut not in ("A", "B"):
            raise UserError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        plan = [(n, width * 2 ** s, [width * 2 ** s], 1 if s == 0 else 2) for s in range(3)]
        return _spec(f"resnet{depth}", "cifar", in_channels, width, "basic", 1, num_classes,
                     _stages(width, plan, shortcut, gates))
    return fn


for _d in (8, 14, 20, 32, 44, 56, 110):
    register(f"resnet{_d}", f"CIFAR ResNet-{_d}: 3 stages of {(_d - 2) // 6} basic blocks, "
             "16/32/64 channels")(_cifar_resnet(_d))


@register("resnext29", "CIFAR ResNeXt-29 (cardinality x base_width, default 8x64d): "
          "3 stages of 3 grouped bottlenecks")
def _resnext29(num_classes: int = 10, cardinality: int = 8, base_width: int = 64,
               width: int = 64, in_channels: int = 3, gates: bool = False) -> dict[str, Any]:
    plan = []
    for s in range(3):
        inner = cardinality * base_width * 2 ** s
        plan.append((3, 4 * width * 2 ** s, [inner, inner], 1 if s == 0 else 2))
    return _spec("resnext29", "cifar", in_channels, width, "bottleneck", cardinality,
                 num_classes, _stages(width, plan, "B", gates))


def _imagenet(arch: str, block: str, layers: list[int], groups: int = 1, width_per_group: int = 64):
    def fn(num_classes: int = 1000, in_channels: int = 3, gates: bool = False) -> dict[str, Any]:
        plan = []
        for s, n in enumerate(layers):
            planes = 64 * 2 ** s
            if block == "basic":
                plan.append((n, planes, [planes], 1 if s == 0 else 2))
            else:
                w = int(planes * (width_per_group / 64.0)) * groups
                plan.append((n, planes * 4, [w, w], 1 if s == 0 else 2))
        return _spec(arch, "imagenet", in_channels, 64, block, groups, num_classes,
                     _stages(64, plan, "B", gates))
    return fn


for _name, _block, _layers in (("resnet18", "basic", [2, 2, 2, 2]),
                               ("resnet34", "basic", [3, 4, 6, 3]),
                               ("resnet50", "bottleneck", [3, 4, 6, 3])):
    register(_name, f"ImageNet {_name} (torchvision names)")(_imagenet(_name, _block, _layers))
register("resnet101", "ImageNet ResNet-101 (torchvision names)")(
    _imagenet("resnet101", "bottleneck", [3, 4, 23, 3]))
register("resnext50_32x4d", "ImageNet ResNeXt-50 32x4d (torchvision names)")(
    _imagenet("resnext50_32x4d", "bottleneck", [3, 4, 6, 3], groups=32, width_per_group=4))
