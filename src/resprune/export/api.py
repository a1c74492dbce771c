"""``export()``: serialise a model, prove the file reproduces PyTorch, then write it atomically.

Order of work, chosen so that a failure never costs the user an existing file:

1. validate the format, target path, input shape, opset and tolerance (cheap, before any work);
2. copy the model to CPU / fp32 / eval mode (the caller's model is left untouched);
3. serialise it to bytes in memory (ONNX or TorchScript);
4. load those exact bytes in the target runtime (onnxruntime / ``torch.jit.load``) and compare
   with PyTorch on seeded random inputs at two batch sizes (1 and 3, neither the batch size the
   graph was traced at, so a batch dimension frozen into the graph fails the check);
5. only then write the bytes with :func:`resprune.io.atomic_write_bytes` (temporary file in the
   target's directory, fsync, ``os.replace``).

A parity failure therefore raises :class:`UserError` with no new file on disk and any previous
file at the path unchanged; so does any other failure.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..io import atomic_write_bytes
from ._onnx import DEFAULT_OPSET, check_opset, onnx_runner, require_onnx, to_onnx_bytes
from ._torchscript import to_torchscript_bytes, torchscript_runner

FORMATS = ("onnx", "torchscript")
CHECK_BATCH_SIZES = (1, 3)
CHECK_SEED = 0


class Normalized(nn.Module):
    """``model((x - mean) / std)``: a model that takes images scaled to [0, 1]."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32)
                             .view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32)
                             .view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def with_preprocess(model: nn.Module) -> Normalized:
    """``model`` with its recorded normalisation in front (``model.preprocess``)."""
    pre = getattr(model, "preprocess", None)
    if not pre:
        raise UserError("the model records no preprocessing (an old run, or imported with "
                        "--preset plain and no --mean/--std), so there is nothing to bake "
                        "in; export without --preprocess and normalise inputs yourself")
    return Normalized(model, pre["mean"], pre["std"])


def export(model: nn.Module, path: str | os.PathLike, format: str = "onnx",
           input_shape: Sequence[int] | None = None, opset: int = DEFAULT_OPSET,
           check: bool = True, atol: float = 1e-4, preprocess: bool = False,
           fold: bool = False, pad_to: int | str | None = None,
           pad_batch: int = 64) -> dict[str, Any]:
    """Export ``model`` to ``path`` as ONNX or TorchScript and check it reproduces PyTorch.

    Args:
        model: any ``nn.Module`` mapping ``(N, C, H, W)`` images to a tensor; it is copied to
            CPU, fp32 and eval mode for export and is not modified.
        path: target file. Missing parent directories are created; an existing file is
            replaced atomically, and only once the new one has passed the check.
        format: ``"onnx"`` (torch.export-based exporter, dynamic ``batch`` dimension, static
            C/H/W, opset ``opset``) or ``"torchscript"`` (``torch.jit.trace``).
        input_shape: ``(C, H, W)``. Default for resprune models: their input channels at
            32x32 (CIFAR stem) or 224x224 (ImageNet stem); required for other modules.
        opset: ONNX opset, 18 or later (ignored for TorchScript).
        check: run the written model at batch sizes 1 and 3 and compare with PyTorch.
        atol: largest allowed max-abs difference between exported and PyTorch outputs.
        preprocess: bake the model's normalisation (``model.preprocess``) into the graph: the
            exported model then takes RGB images scaled to [0, 1] (NCHW, float32).
        fold: export the deployment form (:func:`resprune.export.deploy`: priority gates and
            BatchNorms folded into the convolutions; checked against the model first).
        pad_to: round every channel count up to a multiple of ``pad_to`` first
            (:func:`resprune.export.pad_channels`: zero channels, the same logits; resprune
            ResNets only). onnxruntime computes in blocks of 8 (AVX2) or 16 (AVX-512)
            channels: a pruned net with odd widths may run faster padded. ``"auto"``: time
            both deployment forms in the format's runtime (onnxruntime, or eager for
            TorchScript) at batch ``pad_batch`` and export the faster
            (:func:`resprune.export.pad.choose_padding`).
        pad_batch: the batch size ``pad_to="auto"`` decides at.

    Returns:
        ``{"path", "format", "bytes", "params", "max_abs_diff", "batch_sizes", "input_shape",
        "opset", "atol", "fold", "pad_to", "padding"}`` (``params`` counts a padded model's
        zeros; ``padding``: the timings of ``pad_to="auto"``, else ``None``);
        ``max_abs_diff`` is ``None`` and ``batch_sizes`` empty when ``check`` is false.

    Raises:
        UserError: unsupported format, unusable path, bad shape/opset/atol, missing ONNX
            packages ("install resprune[onnx]"), export failure, or a parity failure.
    """
    if format not in FORMATS:
        raise UserError(f"unsupported export format {format!r}; choose one of: "
                        f"{', '.join(FORMATS)}")
    if not isinstance(model, nn.Module):
        raise UserError(f"can only export a torch.nn.Module, got {type(model).__name__}")
    target = _check_target(path)
    shape = _input_shape(model, input_shape)
    padding = None
    if pad_to == "auto":
        from .pad import choose_padding

        pad_to, padding = choose_padding(model, shape, "onnxruntime" if format == "onnx"
                                         else "eager", pad_batch)
    elif pad_to is not None and (isinstance(pad_to, bool) or not isinstance(pad_to, int)):
        raise UserError(f"pad_to must be a channel multiple >= 1 or 'auto', got {pad_to!r}")
    if fold:
        from .deploy import deploy

        model = deploy(model, shape, pad_to=pad_to)  # a deep copy keeps model.preprocess
    elif pad_to is not None:
        from .pad import pad_channels

        model = pad_channels(model, pad_to)
    if preprocess:
        model = with_preprocess(model)
    if not isinstance(atol, (int, float)) or isinstance(atol, bool) or not atol >= 0 \
            or math.isinf(atol):
        raise UserError(f"atol must be a finite number >= 0, got {atol!r}")
    if format == "onnx":
        require_onnx()
        opset = check_opset(opset)

    ref = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    _probe(ref, shape)
    if format == "onnx":
        data = to_onnx_bytes(ref, shape, opset)
    else:
        data = to_torchscript_bytes(ref, shape)

    diff: float | None = None
    if check:
        diff = _parity(ref, _runner(format, data), shape, format, atol)
    try:
        atomic_write_bytes(target, data)
    except OSError as e:
        raise UserError(f"cannot write export file {target}: {e.strerror or e}") from None
    return {
        "path": str(target),
        "format": format,
        "bytes": target.stat().st_size,
        "params": sum(p.numel() for p in model.parameters()),
        "max_abs_diff": diff,
        "batch_sizes": list(CHECK_BATCH_SIZES) if check else [],
        "input_shape": list(shape),
        "opset": opset if format == "onnx" else None,
        "atol": float(atol),
        "fold": bool(fold),
        "pad_to": pad_to,
        "padding": padding,
    }


def _check_target(path: str | os.PathLike) -> Path:
    """Refuse a path that is a directory or lies under a file or an unwritable directory."""
    target = Path(path)
    if str(path) == "" or target.is_dir():
        raise UserError(f"export path {str(path)!r} is a directory; give a file path such as "
                        f"{target / 'model.onnx'}")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write export file {target}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write export file {target}: directory {parent} is not writable")
    return target


def _input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, int, int]:
    if input_shape is None:
        conv1 = getattr(model, "conv1", None)
        stem = getattr(model, "stem_kind", None)
        if not isinstance(conv1, nn.Conv2d) or stem not in ("cifar", "imagenet"):
            raise UserError("input_shape (C, H, W) is required to export this model")
        pre = getattr(model, "preprocess", None)
        side = pre["input_size"] if pre else (32 if stem == "cifar" else 224)
        return (conv1.in_channels, side, side)
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                  for d in shape):
        raise UserError(f"input_shape must be three positive integers (C, H, W), "
                        f"got {input_shape!r}")
    return shape  # type: ignore[return-value]


def _probe(model: nn.Module, shape: tuple[int, int, int]) -> None:
    """Run PyTorch once so that a wrong input shape is reported as such, not as export noise."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape))
    except Exception as e:  # noqa: BLE001 - the model's own error, whatever its type
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"model does not accept inputs of shape (N, {', '.join(map(str, shape))}):"
                        f" {first[:200]}") from None
    if not isinstance(out, torch.Tensor):
        raise UserError(f"can only export a model returning one tensor, got {type(out).__name__}")


def _runner(format: str, data: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    """Load serialised bytes in the format's own runtime (onnxruntime / torch.jit.load)."""
    try:
        return onnx_runner(data) if format == "onnx" else torchscript_runner(data)
    except Exception as e:  # noqa: BLE001 - runtimes raise many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"the exported {format} model cannot be loaded: {first[:300]}") from None


def _parity(ref: nn.Module, run: Callable[[torch.Tensor], torch.Tensor],
            shape: tuple[int, int, int], format: str, atol: float) -> float:
    """Max abs difference over seeded random batches; UserError if it exceeds ``atol``."""
    gen = torch.Generator().manual_seed(CHECK_SEED)
    worst = 0.0
    for b in CHECK_BATCH_SIZES:
        x = torch.randn((b, *shape), generator=gen)
        with torch.no_grad():
            expected = ref(x)
        try:
            got = run(x.clone())
        except Exception as e:  # noqa: BLE001 - a runtime failure is a failed check
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"the exported {format} model failed at batch size {b}: "
                            f"{first[:300]}; nothing was written") from None
        if tuple(got.shape) != tuple(expected.shape):
            raise UserError(f"the exported {format} model gives shape {tuple(got.shape)} at batch "
                            f"size {b}, PyTorch {tuple(expected.shape)}; nothing was written")
        diff = (got.float() - expected).abs().max().item()
        if not diff <= atol:  # also catches NaN
            raise UserError(f"the exported {format} model does not match PyTorch: max abs "
                            f"difference {diff:.3g} > atol {atol:g} at batch size {b}; "
                            "nothing was written")
        worst = max(worst, diff)
    return worst
