"""A small, learnable synthetic image dataset for fast tests.

Each class has a fixed smooth random pattern (a coarse 4x4 grid per channel, upsampled
bilinearly to the image size). A sample is its class pattern with a random contrast and
brightness plus pixel noise, stored as uint8. Everything is drawn from ``seed``, so the same
arguments always give the same tensors. With the default noise a tiny ResNet separates the
classes within a few epochs; raise ``noise`` to make the task harder.
"""

from __future__ import annotations

import torch

from ..errors import UserError


def _check(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"synthetic option {name} must be an integer >= {minimum}, got {value!r}")
    return value


def make_synthetic(num_samples: int, *, num_classes: int = 10, channels: int = 3,
                   size: int = 32, noise: float = 0.35, seed: int = 0,
                   pattern_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` images uint8 [N, channels, size, size] and int64 labels [N].

    Classes are balanced (``i % num_classes`` for the i-th sample, then shuffled). The class
    patterns come from ``pattern_seed`` (default ``seed``), so a train and a test set drawn
    with different ``seed`` but the same ``pattern_seed`` describe the same task.
    """
    _check("num_samples", num_samples, 0)
    _check("num_classes", num_classes, 2)
    _check("channels", channels, 1)
    _check("size", size, 4)
    if not (isinstance(noise, (int, float)) and noise >= 0):
        raise UserError(f"synthetic option noise must be a number >= 0, got {noise!r}")
    pg = torch.Generator().manual_seed(int(seed if pattern_seed is None else pattern_seed))
    coarse = torch.rand(num_classes, channels, 4, 4, generator=pg) * 2 - 1
    patterns = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                               align_corners=False)
    patterns = patterns / patterns.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)

    g = torch.Generator().manual_seed(int(seed) + 0x5EED)
    labels = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=g)]
    contrast = 0.7 + 0.6 * torch.rand(num_samples, 1, 1, 1, generator=g)
    bright = 0.1 * (torch.rand(num_samples, 1, 1, 1, generator=g) * 2 - 1)
    pix = torch.randn(num_samples, channels, size, size, generator=g) * float(noise)
    x = 0.5 + 0.35 * (contrast * patterns[labels] + bright + pix)
    images = (x * 255).round().clamp(0, 255).to(torch.uint8)
    return images, labels.to(torch.int64)
