"""TorchScript serialisation (``torch.jit.trace`` + ``torch.jit.save``) and a loader to check it.

Tracing, not scripting: resprune's units have optional submodules and parameters (``downsample``
and ``gate`` may be ``None``) that tracing resolves while scripting would need annotations on
every module. The zero-padding shortcut builds its zero channel from the traced batch size
(``x.shape[0]``), which the tracer records as a dynamic ``aten::size``, so the traced module
accepts any batch size; the parity check at two batch sizes proves it for each export.
torch 2.13 marks ``torch.jit`` deprecated; its warnings are silenced here.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..errors import UserError


def to_torchscript_bytes(model: nn.Module, input_shape: tuple[int, int, int],
                         example_batch: int = 2) -> bytes:
    """Trace ``model`` (eval, CPU, fp32) on a random batch and serialise it with torch.jit.save."""
    example = torch.randn(example_batch, *input_shape)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, (example,), check_trace=False)
            torch.jit.save(traced, buf)
    except Exception as e:  # noqa: BLE001 - tracing raises many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"TorchScript export failed: {first[:300]}") from None
    return buf.getvalue()


def torchscript_runner(data: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    """Load TorchScript bytes with torch.jit.load (CPU) as ``tensor -> tensor``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    module.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return module(x)

    return run
