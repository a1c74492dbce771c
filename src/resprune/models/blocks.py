"""Residual units and shortcuts. Attribute names follow torchvision so state_dicts match.

Every unit computes ``relu(shortcut(x) + gate * F(x))``. ``gate`` is the optional learnable
priority term of Network Implosion (a scalar parameter, ``None`` when absent); with the gate
at 1 the unit gives exactly the output of the ungated unit.
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: subsample spatially, then place input channels.

    ``index[k]`` is the input channel copied to output channel ``k``, or ``-1`` for a zero
    channel. The original CIFAR ResNet pads ``(out - in) // 2`` zero channels on both sides,
    i.e. ``index = [-1]*p + [0..in-1] + [-1]*p``. After channel pruning the map is arbitrary,
    which is why it is stored explicitly (in the architecture spec, not in the state_dict).
    """

    def __init__(self, in_channels: int, index: list[int], stride: int = 2):
        super().__init__()
        if any(i < -1 or i >= in_channels for i in index):
            raise ValueError(f"pad-shortcut index out of range for {in_channels} input channels")
        self.in_channels = in_channels
        self.stride = stride
        # gather index into [x, zero-channel]: -1 maps to the appended zero channel
        gather = torch.tensor([i if i >= 0 else in_channels for i in index], dtype=torch.long)
        self.register_buffer("gather_index", gather, persistent=False)

    @property
    def index(self) -> list[int]:
        return [i if i < self.in_channels else -1 for i in self.gather_index.tolist()]

    @property
    def out_channels(self) -> int:
        return int(self.gather_index.numel())

    @staticmethod
    def default_index(in_channels: int, out_channels: int) -> list[int]:
        pad = (out_channels - in_channels) // 2
        return [k - pad if 0 <= k - pad < in_channels else -1 for k in range(out_channels)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        zero = x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])
        return torch.cat([x, zero], dim=1).index_select(1, self.gather_index)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"stride={self.stride}")


def projection(cin: int, cout: int, stride: int) -> nn.Sequential:
    """"Option B" shortcut, named like torchvision's ``downsample`` (0: conv, 1: BN)."""
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class ResidualUnit(nn.Module):
    """Base of resprune's residual units.

    Subclasses implement :meth:`branch` (the residual mapping F) and name their last BN in
    ``last_bn``. ``downsample`` is ``None`` for an identity shortcut.
    """

    downsample: nn.Module | None
    gate: nn.Parameter | None
    last_bn: str

    def _init_gate(self, gate: bool) -> None:
        if gate:
            self.gate = nn.Parameter(torch.ones(()))
        else:
            self.register_parameter("gate", None)

    @property
    def is_identity_shortcut(self) -> bool:
        return self.downsample is None

    def branch(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.branch(x)
        if self.gate is not None:
            out = out * self.gate
        return self.relu(out + identity)


class BasicBlock(ResidualUnit):
    last_bn = "bn2"

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1,
                 downsample: nn.Module | None = None, gate: bool = False):
        super().__init__()
        self.conv1 = conv3x3(cin, mid, stride)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(mid, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample
        self.stride = stride
        self._init_gate(gate)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(ResidualUnit):
    """1x1 -> 3x3 (stride, groups) -> 1x1, stride on the 3x3 as in torchvision (v1.5)."""

    last_bn = "bn3"

    def __init__(self, cin: int, width1: int, width2: int, cout: int, stride: int = 1,
                 groups: int = 1, downsample: nn.Module | None = None, gate: bool = False):
        super().__init__()
        self.conv1 = conv1x1(cin, width1)
        self.bn1 = nn.BatchNorm2d(width1)
        self.conv2 = conv3x3(width1, width2, stride, groups)
        self.bn2 = nn.BatchNorm2d(width2)
        self.conv3 = conv1x1(width2, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self._init_gate(gate)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))
