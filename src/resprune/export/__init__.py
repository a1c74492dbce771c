"""Export a model to ONNX or TorchScript, verified against PyTorch before it is written.

>>> from resprune.export import export
>>> info = export(model, "runs/r56/model.onnx", format="onnx", input_shape=(3, 32, 32))
>>> info["max_abs_diff"] <= 1e-4
True

See :func:`export` for the guarantees (atomic write, dynamic batch, parity check).
"""

from .api import FORMATS, export
from .deploy import deploy
from .pad import pad_channels

__all__ = ["FORMATS", "deploy", "export", "pad_channels"]
