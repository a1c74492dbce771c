"""Hook points of the training loop, so that features add behaviour without copying the loop.

Subclass :class:`Callback` and override what you need; every method is a no-op by default.
A callback whose behaviour depends on past epochs (e.g. a running best accuracy) should
implement :meth:`Callback.state_dict` / :meth:`Callback.load_state_dict` so that a resumed
run continues exactly; that state is stored in ``train_state.pt`` and must therefore hold
only tensors and plain containers of numbers and strings.

Loss terms are simpler still: any callable ``(model) -> scalar Tensor``, added to the loss of
every step (see :class:`~resprune.train.Trainer`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


class Callback:
    """Base class of training callbacks (all methods optional)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once per :meth:`Trainer.fit`, after seeding or restoring a resumed state."""

    def after_step(self, trainer: Trainer) -> None:
        """Called after every ``optimizer.step()``; ``trainer.global_step`` counts it."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """Called after validation, before ``record`` is written; may add keys to it."""

    def state_dict(self) -> dict[str, Any]:
        """State to store in ``train_state.pt`` (default: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, when a run is resumed."""
