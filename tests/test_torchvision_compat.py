"""The ImageNet zoo models carry torchvision's exact state_dict names and shapes.

``fixtures/torchvision_keys.json`` was generated from torchvision 0.29.2's own
``models/resnet.py`` by ``fixtures/make_torchvision_keys.py`` (which imports nothing from
resprune), so these tests compare resprune against torchvision, not against itself. As an
independent check of the fixture, its parameter counts must equal the ``num_params`` that
torchvision publishes for its ImageNet weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from resprune import create

FIXTURE = Path(__file__).parent / "fixtures" / "torchvision_keys.json"
TORCHVISION = json.loads(FIXTURE.read_text(encoding="utf-8"))
ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d"]
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

# "num_params" of torchvision's IMAGENET1K weight entries (metadata, not computed by resprune)
TORCHVISION_NUM_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnext50_32x4d": 25_028_904,
}




def _random_state(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """A state_dict with the fixture's names and shapes and random, well-scaled values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            t = torch.randint(1, 10_000, shape, generator=g, dtype=torch.long)
        elif key.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean") or key.endswith("bias"):
            t = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # BN scale
            t = torch.rand(shape, generator=g) * 0.5 + 0.25
        else:  # conv / fc weight, He-scaled by fan-in so 100 layers stay finite
            t = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
        state[key] = t
    return state


def test_fixture_is_torchvisions() -> None:
    assert list(TORCHVISION) == ARCHS
    for arch, shapes in TORCHVISION.items():
        params = sum(math.prod(s) for k, s in shapes.items() if not k.endswith(BUFFERS))
        assert params == TORCHVISION_NUM_PARAMS[arch], arch


@pytest.mark.parametrize("arch", ARCHS)
def test_torchvision_state_dict_loads_strictly(arch: str) -> None:
    expected = TORCHVISION[arch]
    model = create(arch, num_classes=1000)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == list(expected.items())  # same names, same order, same shapes
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_NUM_PARAMS[arch]

    state = _random_state(expected, seed=len(arch))
    model.load_state_dict(state, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # every tensor landed where it belongs

    # a second, independently initialised instance given the same state gives the same logits
    torch.manual_seed(12345)
    twin = create(arch, num_classes=1000)
    twin.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.eval()(x)
        again = model(x)
        twin_logits = twin.eval()(x)
    assert logits.shape == (2, 1000)
    assert torch.isfinite(logits).all() and logits.std() > 0
    assert torch.equal(logits, again) and torch.equal(logits, twin_logits)
