"""ONNX serialisation through ``torch.onnx.export`` and an onnxruntime runner for parity checks.

Exporter choice: the torch.export-based ("dynamo") exporter. In torch 2.13 both paths export
every resprune model (zero-padding shortcuts with arbitrary index maps, projection shortcuts,
grouped convs, priority gates, erased units) to a graph whose shapes are static except for a
batch dimension named ``batch``, and both match PyTorch to ~1e-6. The legacy TorchScript-based
exporter, however, is deprecated since torch 2.9 and warns that it will be removed, so resprune
uses the dynamo path with ``dynamic_shapes`` (not the legacy ``dynamic_axes``). The dynamo
exporter implements opset 18 and later only: a lower requested opset is silently exported as
18, so :func:`check_opset` refuses it up front.

The dynamo exporter attaches debugging metadata to every node (Python stack traces with local
source paths, FX node dumps): about a fifth of a small model's file. :func:`to_onnx_bytes`
strips it, so the file holds the graph and the weights and nothing about the exporting machine.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..errors import UserError

MIN_OPSET = 18
DEFAULT_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"


def require_onnx() -> None:
    """Raise :class:`UserError` unless onnx, onnxscript and onnxruntime can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e}); "
                        "install resprune[onnx]") from None


def check_opset(opset: Any) -> int:
    """Validate a requested opset against what the exporter and the onnx package support."""
    import onnx.defs

    top = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= top:
        raise UserError(f"opset must be an integer from {MIN_OPSET} to {top} (torch's ONNX "
                        f"exporter implements opset {MIN_OPSET} and later), got {opset!r}")
    return opset


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress warnings (e.g. 'torchvision is not installed')."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _strip_metadata(graph: Any) -> None:
    """Drop per-node debugging metadata and doc strings, recursing into subgraphs."""
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        for attr in node.attribute:
            if attr.HasField("g"):
                _strip_metadata(attr.g)
            for sub in attr.graphs:
                _strip_metadata(sub)


def _signature(value_infos: Any) -> list[tuple[str, list[int | str]]]:
    return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in value_infos]


def to_onnx_bytes(model: nn.Module, input_shape: tuple[int, int, int], opset: int,
                  example_batch: int = 2) -> bytes:
    """Export ``model`` (eval, CPU, fp32) to ONNX bytes with a dynamic ``batch`` dimension.

    Raises :class:`UserError` if the exporter fails or the graph's input/output signature is
    not ``input: [batch, C, H, W]`` -> ``logits: [batch, ...static...]`` at the requested opset.
    """
    import onnx

    example = torch.randn(example_batch, *input_shape)
    batch = torch.export.Dim(BATCH_DIM, min=1)
    try:
        with _quiet():
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, verbose=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), opset_version=opset, external_data=False)
            proto = program.model_proto
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"ONNX export failed: {first[:300]}") from None
    _strip_metadata(proto.graph)
    opsets = {o.domain: o.version for o in proto.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != opset:
        raise UserError(f"ONNX export produced opset {opsets} instead of the requested {opset}")
    inputs, outputs = _signature(proto.graph.input), _signature(proto.graph.output)
    if inputs != [(INPUT_NAME, [BATCH_DIM, *input_shape])] or len(outputs) != 1 or (
            outputs[0][1][:1] != [BATCH_DIM]
            or not all(isinstance(d, int) for d in outputs[0][1][1:])):
        raise UserError(f"ONNX export did not give a static graph with a dynamic batch "
                        f"dimension (inputs {inputs}, outputs {outputs})")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def session_options() -> Any:
    """onnxruntime session options for resprune's checks and timings: as many intra-op threads
    as torch (``torch.get_num_threads()``), so a caller that limits torch's threads limits
    onnxruntime too, and **no spin-waiting**. By default each session's thread pool keeps
    spinning after a run; several sessions timed interleaved in one process (or a busy
    machine) then steal each other's cores: ResNet-56 with 2 threads at batch 1 took 13.5 ms
    interleaved with a pruned copy against 4.0 ms alone with spinning, 8.25 ms against 8.24
    ms without it (benchmarks/results/ort_spinning.md). Without spinning an interleaved
    timing is the model's time alone; a lone session with spinning runs faster.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()  # follow torch's thread budget
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def onnx_runner(data: bytes) -> Callable[[torch.Tensor], torch.Tensor]:
    """An onnxruntime (CPU) session over ONNX bytes, wrapped as ``tensor -> tensor``, with
    :func:`session_options`."""
    import onnxruntime as ort

    options = session_options()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        return torch.from_numpy(out)

    run.threads = options.intra_op_num_threads  # type: ignore[attr-defined]
    return run
