"""Fade: drive chosen parameter slices to exactly zero during training, step by step.

Removing a structure the network still uses (a residual unit, a channel group) costs accuracy
at once and the remaining budget must win it back. A fade removes it *while* training: after
every optimizer step the chosen slices are multiplied by ``s(t) / s(t-1)``, where
``s(t) = max(0, 1 - t / T)`` falls linearly from 1 to 0 over the first ``T = end x total
steps`` of the fit; from step ``T`` on they are held at zero. Between steps the slices still
receive gradients, so the rest of the network learns to do without them gradually; at the end
they are exactly zero and cutting them out changes no output.

The factor depends only on the trainer's ``global_step``, so the callback keeps no state and a
resumed fit fades exactly as an uninterrupted one. Used by ``resprune implode --erase fade``
(the priority gates of the units a step erases) and ``resprune vacl --fade linear`` (the BN
scale and shift of the channel groups pruning removes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..fields import Float
from .callbacks import Callback

FADES = ("off", "linear")


@dataclass(frozen=True)
class Slice:
    """``model.get_submodule(module).<param>[channels]`` (all of it when ``channels`` is None)."""

    module: str
    param: str
    channels: tuple[int, ...] | None = None


#: the ``fade_end`` field of implosion's and VACL's configs
FADE_END = Float(0, 1, open_low=True)
FADE_END_HELP = ("with implode --erase fade / vacl --fade: the faded units or channel groups "
                 "reach exactly zero after this fraction of the training's steps and stay zero "
                 "for the rest")


def check_end(end: float) -> float:
    if FADE_END.check(end) is not None:
        raise UserError(f"fade end must be a fraction of the training in (0, 1], got {end!r}")
    return float(end)


def fade_factor(step: int, total: int) -> float:
    """Multiplier applied after optimizer step ``step`` (1-based) of a ``total``-step fade."""
    if step >= total:
        return 0.0
    return (total - step) / (total - step + 1)


class Fade(Callback):
    """Scale ``slices`` towards zero after every optimizer step (see the module docstring).

    ``end``: the fraction of the fit's optimizer steps after which the slices are zero.
    """

    def __init__(self, slices: Sequence[Slice], end: float = 0.75):
        self.slices = list(slices)
        self.end = check_end(end)
        self.total = 0
        self._params: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def on_fit_start(self, trainer) -> None:
        steps = trainer.steps_per_epoch * trainer.config.epochs
        self.total = max(1, round(self.end * steps))
        self._params = resolve(trainer.model, self.slices)

    @torch.no_grad()
    def after_step(self, trainer) -> None:
        apply(self._params, fade_factor(trainer.global_step, self.total))


def resolve(model: nn.Module, slices: Sequence[Slice]
            ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(parameter, channel index or None)`` of every slice, checked against ``model``."""
    out = []
    for s in slices:
        try:
            mod = model.get_submodule(s.module)
        except AttributeError:
            raise UserError(f"cannot fade {s.module}.{s.param}: the model has no module "
                            f"{s.module!r}") from None
        p = getattr(mod, s.param, None)
        if not isinstance(p, torch.Tensor):
            raise UserError(f"cannot fade {s.module}.{s.param}: no such parameter")
        idx = None
        if s.channels is not None:
            if s.channels and max(s.channels) >= p.shape[0]:
                raise UserError(f"cannot fade {s.module}.{s.param}: channel "
                                f"{max(s.channels)} is beyond its {p.shape[0]} channels")
            idx = torch.tensor(s.channels, dtype=torch.long, device=p.device)
        out.append((p, idx))
    return out


@torch.no_grad()
def apply(params: Sequence[tuple[torch.Tensor, torch.Tensor | None]], factor: float) -> None:
    """Multiply every resolved slice by ``factor`` in place (0 sets it to exactly zero)."""
    if factor == 1.0:
        return
    for p, idx in params:
        if idx is None:
            p.zero_() if factor == 0.0 else p.mul_(factor)
        elif factor == 0.0:
            p.index_fill_(0, idx, 0.0)
        else:
            p.index_copy_(0, idx, p.index_select(0, idx) * factor)
