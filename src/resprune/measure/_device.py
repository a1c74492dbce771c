"""Device and precision helpers shared by the measurement functions and the trainer."""

from __future__ import annotations

import contextlib

import torch

from ..errors import UserError

PRECISIONS = ("fp32", "bf16")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; refuse CUDA where there is none."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise UserError(f"unknown device {device!r}; use cpu, cuda or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!s} requested but no CUDA device is available here; "
                        "use cpu (or auto)")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {device!s}; use cpu, cuda or auto")
    return dev


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision="bf16"``, a no-op for fp32."""
    if check_precision(precision) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")
