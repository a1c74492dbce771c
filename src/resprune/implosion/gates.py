"""Priority gates of Network Implosion, and the residual-unit protocol they rely on.

A residual unit computes ``relu(shortcut(x) + w * F(x))``; ``w`` is a learnable scalar gate
initialised to 1, so a freshly gated network gives exactly the logits of the ungated one
(``F(x) * 1.0`` is ``F(x)`` bit for bit). Trained with the same weight decay as the other
weights, ``|w|`` becomes the unit's priority: units whose gate shrinks matter least.

Residual-unit protocol (how your own blocks become erasable)
------------------------------------------------------------
Any subclass of :class:`resprune.models.ResidualUnit`, anywhere in any ``nn.Module`` tree,
works with gates, scores, erasure and gate folding. It must

* implement ``branch(x)``: the residual mapping ``F(x)``, ending with a BatchNorm;
* set ``downsample``: ``None`` for an identity shortcut (only such units are erasable), or the
  shortcut module (projection, padding, ...) otherwise;
* set ``relu``: the activation applied after the addition;
* name its branch's last BatchNorm in the class attribute ``last_bn`` (a submodule path such
  as ``"bn2"``): gate folding scales that BN's affine parameters;
* register its gate with ``self._init_gate(False)`` in ``__init__`` (``gate`` is then a
  ``None`` parameter slot that :func:`add_gates` fills), and keep the inherited ``forward``.

Units are named by their path in ``model.named_modules()`` (for zoo models ``layer3.4``).
Erasure replaces a unit in its parent module with ``nn.Identity``, so the parent must call it
like any other module (``nn.Sequential``, ``nn.ModuleList``, an attribute in ``forward``).
Erasing a unit whose gate is 0 leaves the output unchanged only when the unit's input is
non-negative, which holds when the previous layer ends with a ReLU (true for every zoo model).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..models import ResidualUnit


def residual_units(model: nn.Module) -> list[tuple[str, ResidualUnit]]:
    """``(name, unit)`` of every residual unit in ``model``, in module order.

    Units nested inside another unit are not listed: the outer unit is the one that can be
    gated or erased.
    """
    found: list[tuple[str, ResidualUnit]] = []
    for name, m in model.named_modules():
        if not isinstance(m, ResidualUnit) or m is model:
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue
        found.append((name, m))
    return found


def check_unit(name: str, unit: nn.Module) -> ResidualUnit:
    """Check that ``unit`` follows the residual-unit protocol; raise UserError otherwise."""
    if not isinstance(unit, ResidualUnit):
        raise UserError(f"module {name!r} ({type(unit).__name__}) is not a resprune "
                        "ResidualUnit; subclass resprune.models.ResidualUnit to make it erasable")
    for attr in ("downsample", "relu", "last_bn"):
        if not hasattr(unit, attr):
            raise UserError(f"residual unit {name!r} ({type(unit).__name__}) has no attribute "
                            f"{attr!r}; see the residual-unit protocol in resprune.implosion.gates")
    return unit


def is_erasable(unit: nn.Module) -> bool:
    """A unit is erasable when its shortcut is the identity (no projection, no padding)."""
    return (isinstance(unit, ResidualUnit) and hasattr(unit, "downsample")
            and unit.downsample is None)


def erasable_items(model: nn.Module) -> list[tuple[str, ResidualUnit]]:
    """``(name, unit)`` of every erasable unit, in module order."""
    return [(name, unit) for name, unit in residual_units(model)
            if is_erasable(check_unit(name, unit))]


def erasable_units(model: nn.Module) -> list[str]:
    """Names of the units that may be erased: residual units with an identity shortcut.

    A unit that changes resolution or width (projection or zero-padding shortcut), the stem
    and the classifier are never listed; neither are units already erased.
    """
    return [name for name, _ in erasable_items(model)]


def get_gate(unit: nn.Module) -> nn.Parameter | None:
    return getattr(unit, "gate", None)


def gate_value(unit: nn.Module) -> float:
    """The unit's gate ``w`` as a float; a unit without a gate counts as ``w = 1``."""
    g = get_gate(unit)
    return 1.0 if g is None else float(g.detach())


def add_gates(model: nn.Module) -> list[str]:
    """Give every erasable unit that has none a scalar gate ``w = 1`` (in place).

    The gate is created on the device and in the dtype of the unit's parameters. Returns the
    names of the units that received a gate (empty when every erasable unit already had one).
    The model's logits are exactly unchanged.
    """
    added = []
    for name, unit in residual_units(model):
        if not is_erasable(unit) or get_gate(unit) is not None:
            continue
        check_unit(name, unit)
        ref = next(unit.parameters(), None)
        kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        unit.gate = nn.Parameter(torch.ones((), **kw))
        added.append(name)
    return added


def gates(model: nn.Module) -> dict[str, float]:
    """``{unit name: w}`` for every unit that carries a gate."""
    return {name: gate_value(unit) for name, unit in residual_units(model)
            if get_gate(unit) is not None}


def last_bn(name: str, unit: nn.Module) -> nn.BatchNorm2d | nn.BatchNorm1d:
    """The branch's last BatchNorm, named by the unit's ``last_bn`` attribute."""
    check_unit(name, unit)
    try:
        bn = unit.get_submodule(unit.last_bn)
    except AttributeError:
        raise UserError(f"residual unit {name!r}: last_bn={unit.last_bn!r} names no submodule"
                        ) from None
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise UserError(f"residual unit {name!r}: last_bn={unit.last_bn!r} is a "
                        f"{type(bn).__name__}, not a BatchNorm")
    return bn


@torch.no_grad()
def fold_gates(model: nn.Module) -> dict[str, float]:
    """Fold every gate ``w`` into its branch's last BN (in place) and remove the gate.

    ``w * BN(z) = (w * gamma) * zhat + w * beta``, so scaling gamma and beta by ``w`` gives
    the same output, in training and in eval mode, with no extra op at inference. The spec of
    a zoo model no longer shows gates afterwards. Returns ``{unit name: folded w}``.
    """
    folded = {}
    for name, unit in residual_units(model):
        g = get_gate(unit)
        if g is None:
            continue
        bn = last_bn(name, unit)
        if bn.weight is None or bn.bias is None:
            raise UserError(f"cannot fold the gate of {name!r}: its last BatchNorm has no affine "
                            "parameters (build it with affine=True)")
        w = g.detach().to(bn.weight.dtype)
        bn.weight.mul_(w)
        bn.bias.mul_(w)
        folded[name] = float(w)
        unit.gate = None
    return folded


def unit_weight_layers(unit: nn.Module) -> int:
    """Weight layers (convolutions and linear layers) of a unit's branch and shortcut."""
    return sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
               for m in unit.modules())
