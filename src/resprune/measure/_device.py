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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86: AVX-512 BF16 or AMX; Arm: BF16).

    Without it, PyTorch emulates bf16 on the CPU: ResNet-56 training measured about 15x
    slower than fp32 on an AVX2 machine. Unknown platforms count as native (no warning).
    """
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return True
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    if not flags:
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def bf16_warning(device: torch.device, precision: str) -> str | None:
    """One line when bf16 on this CPU would be emulated (slow), else ``None``."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return ("this CPU has no native bf16 (no AVX-512 BF16 or AMX), so bf16 autocast is "
                "emulated and about 15x slower than fp32")
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")
