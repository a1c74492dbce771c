"""Channel padding for deployment: a pruned ResNet with every channel count rounded up to a
multiple of the runtime's channel block, computing the same logits.

Runtimes compute convolutions in blocks of channels (onnxruntime's CPU provider in blocks of
8 on AVX2 and 16 on AVX-512): a layer with 13 channels costs as much as one with 16, and a
graph whose widths are not multiples of the block may miss the runtime's fastest kernels
altogether (on ResNet-56 pruned to odd widths, onnxruntime ran slower than eager PyTorch;
``docs/measurement.md``). :func:`pad_channels` gives the runtime the widths it wants without
changing what the model computes:

- every added output channel of a convolution has a zero filter, and its BatchNorm channel
  has weight 0, bias 0, running mean 0 and variance 1, so the channel is exactly 0 after
  the BN (and after the ReLU);
- every layer reading an added channel has zero weights for it (convolutions, the
  classifier), and zero-padding shortcuts give added channels zero (``-1`` in their map);
- in a grouped convolution (ResNeXt) each group grows by the same number of channels and the
  original channels keep their group: channel ``i`` of a width ``w`` with ``g`` groups moves
  to ``(i // (w/g)) * (w'/g) + i % (w/g)``.

The architecture is the spec rounded by :func:`resprune.measure.compare.round_channels`
(image channels and classes are not padded); the padded copy is checked against the model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .deploy import check_logits, model_input_shape


def _grouped_map(old: int, new: int, groups: int) -> torch.Tensor:
    per_old, per_new = old // groups, new // groups
    i = torch.arange(old)
    return (i // per_old) * per_new + i % per_old


def _scatter(old: torch.Tensor, shape: torch.Size,
             maps: dict[int, torch.Tensor]) -> torch.Tensor:
    """``old`` placed in a zero tensor of ``shape``: along dim ``d`` at ``maps[d]`` (default:
    the leading entries)."""
    out = old
    for d, n in enumerate(shape):
        if out.shape[d] == n and d not in maps:
            continue
        index = maps.get(d, torch.arange(out.shape[d]))
        size = list(out.shape)
        size[d] = n
        out = out.new_zeros(size).index_copy_(d, index.to(out.device), out)
    return out


def _inner_maps(old_unit: nn.Module, new_unit: nn.Module, groups: int) -> dict[str, dict]:
    """Per parameter of a grouped bottleneck, the dims whose channels move (the inner widths
    of a grouped 3x3 conv); empty for every other unit."""
    if groups == 1 or not hasattr(old_unit, "conv3"):
        return {}
    w1 = _grouped_map(old_unit.conv1.out_channels, new_unit.conv1.out_channels, groups)
    w2 = _grouped_map(old_unit.conv2.out_channels, new_unit.conv2.out_channels, groups)
    maps: dict[str, dict] = {"conv1.weight": {0: w1}, "conv2.weight": {0: w2},
                             "conv3.weight": {1: w2}}
    for key in ("weight", "bias", "running_mean", "running_var"):
        maps[f"bn1.{key}"], maps[f"bn2.{key}"] = {0: w1}, {0: w2}
    return maps


@torch.no_grad()
def pad_channels(model: nn.Module, multiple: int, atol: float = 1e-4) -> nn.Module:
    """An eval-mode copy of a resprune ResNet with every inner channel count rounded up to a
    multiple of ``multiple``, computing the same logits (module docstring).

    Raises UserError for models that are not resprune ResNets, a bad ``multiple``, or if
    the padded copy's logits differ from the model's by more than ``atol`` times their
    largest magnitude.
    """
    from ..measure.compare import round_channels
    from ..models.resnet import ResNet, build

    if not isinstance(model, ResNet):
        raise UserError(f"channel padding needs a resprune ResNet (zoo, imported or pruned), "
                        f"got {type(model).__name__}")
    spec = round_channels(model.spec(), multiple)
    ref = next(model.parameters())
    net = build(spec).to(ref.device, ref.dtype).eval()
    groups = spec.get("groups", 1)
    maps: dict[str, dict] = {}
    for (name, old_unit), (_, new_unit) in zip(model.units(), net.units()):
        for key, m in _inner_maps(old_unit, new_unit, groups).items():
            maps[f"{name}.{key}"] = m
    old_state = model.state_dict()
    new_state = net.state_dict()
    for key, target in new_state.items():
        old = old_state[key]
        if key.endswith("running_var"):  # added channels: variance 1 (any positive value)
            target.copy_(_scatter(old - 1, target.shape, maps.get(key, {})) + 1)
        else:
            target.copy_(_scatter(old, target.shape, maps.get(key, {})))
    net.load_state_dict(new_state)
    if getattr(model, "preprocess", None) is not None:
        net.preprocess = model.preprocess
    check_logits(model, net, model_input_shape(model), atol, "padding")
    return net


#: onnxruntime's blocked-layout channel block per CPU capability (floats per vector register)
CPU_BLOCKS = {"AVX512": 16, "AVX2": 8}


def needs_padding(model: nn.Module, multiple: int) -> bool:
    """Whether some convolution of ``model`` has a width that is not a multiple."""
    return any(c.out_channels % multiple for c in model.modules() if isinstance(c, nn.Conv2d))


def cpu_block() -> int | None:
    """The channel block onnxruntime computes convolutions in on this CPU (8 with AVX2, 16
    with AVX-512; ``None`` when torch reports neither)."""
    return CPU_BLOCKS.get(torch.backends.cpu.get_cpu_capability())


def choose_padding(model: nn.Module, input_shape=None, runtime: str = "onnxruntime",
                   batch: int = 64, multiple: int | None = None,
                   repeats: int = 7) -> tuple[int | None, dict]:
    """Whether padding ``model`` to multiples of ``multiple`` (default :func:`cpu_block`) runs
    faster in ``runtime`` at ``batch``: both deployment forms (:func:`resprune.deploy`, exact
    and padded) timed interleaved with the current thread count (median of ``repeats`` rounds).

    Returns ``(multiple or None, info)``: the multiple when the padded form was faster, else
    ``None`` (keep the exact widths); ``info`` holds ``runtime``, ``batch``, ``multiple``,
    ``exact_ms``, ``padded_ms`` and ``reason``. Nothing is timed when the widths already are
    multiples or the CPU's block is unknown. The answer depends on the batch size
    (docs/measurement.md: padded was faster at batch 64 and slower at 256 on ResNet-56).
    """
    from ..measure import compare
    from .deploy import deploy, model_input_shape

    shape = model_input_shape(model, input_shape)
    m = multiple if multiple is not None else cpu_block()
    info: dict = {"runtime": runtime, "batch": batch, "multiple": m, "exact_ms": None,
                  "padded_ms": None}
    if m is None:
        info["reason"] = ("torch reports neither AVX2 nor AVX-512 for this CPU, so its "
                          "channel block is unknown: pass a multiple")
        return None, info
    if not needs_padding(model, m):
        info["reason"] = f"every width already is a multiple of {m}"
        return None, info
    runs = {"exact": compare.prepare(deploy(model, shape), shape, runtime),
            "padded": compare.prepare(deploy(model, shape, pad_to=m), shape, runtime)}
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0))
    ms = compare.interleaved_medians({k: (lambda f=f: f(x)) for k, f in runs.items()}, 1,
                                     repeats)
    info.update(exact_ms=float(ms["exact"]), padded_ms=float(ms["padded"]))
    faster = ms["padded"] < ms["exact"]
    info["reason"] = (f"padded to {m}: {ms['padded']:.1f} ms against {ms['exact']:.1f} ms "
                      f"exact" if faster else f"exact widths: {ms['exact']:.1f} ms against "
                      f"{ms['padded']:.1f} ms padded to {m}") + f" ({runtime}, batch {batch})"
    return (m if faster else None), info
