"""Static erasure of residual units: the branch is deleted, the identity shortcut stays.

An erased unit becomes an ``nn.Identity`` in its parent module, so its weights, MACs and
weight layers are gone for every input. In a zoo model the slot is kept (``layer3.4`` stays
``layer3.4`` for the units after it) and the architecture spec marks it ``{"erased": true}``,
so ``resprune.save`` / ``resprune.load`` round-trip an erased network.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..errors import UserError
from .gates import erasable_units


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` with ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child not in parent._modules:
        raise UserError(f"{name!r} is not a submodule of the model")
    parent._modules[child] = module


def erase_units(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Replace the named units by ``nn.Identity`` (in place); return the erased names.

    Every name must be an erasable unit (see :func:`erasable_units`); nothing is erased when
    one is not. The unit's input then passes straight on: with a gate of 0 the logits are
    unchanged, since the unit's input is the output of a ReLU (``relu(x + 0) = x``).
    """
    names = [names] if isinstance(names, str) else list(names)
    allowed = erasable_units(model)
    seen = set()
    for name in names:
        if not isinstance(name, str):
            raise UserError(f"unit names must be strings, got {name!r}")
        if name in seen:
            raise UserError(f"unit {name!r} is listed twice")
        seen.add(name)
        if name not in allowed:
            raise UserError(_refusal(model, name, allowed))
    for name in names:
        set_submodule(model, name, nn.Identity())
    return names


def _refusal(model: nn.Module, name: str, allowed: list[str]) -> str:
    modules = dict(model.named_modules())
    shown = ", ".join(allowed[:12]) + (", ..." if len(allowed) > 12 else "")
    choices = f"erasable units: {shown}" if allowed else "no erasable units are left"
    m = modules.get(name)
    if m is None:
        why = "no such unit"
    elif isinstance(m, nn.Identity):
        why = "it is already erased"
    elif getattr(m, "downsample", None) is not None:
        why = "its shortcut is not the identity (it changes resolution or width)"
    else:
        why = "it is not a residual unit"
    return f"cannot erase {name!r}: {why}; {choices}"
