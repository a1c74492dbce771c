"""The scikit-learn handwritten digits as a real, offline dataset for demos and smoke tests.

``sklearn.datasets.load_digits`` ships inside scikit-learn (no download): 1797 grayscale 8x8
images with values 0..16, ten classes. They are scaled to uint8 0..255 and bilinearly
upsampled to 16x16 so a small CIFAR-style ResNet (two stride-2 stages) still sees a few
pixels per feature map. The train/test split is fixed (stratified, 20 % test, seed
:data:`SPLIT_SEED`), independent of the validation seed, so every run reports on the same
test images.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .split import stratified_split

SIZE = 16
NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def _load_raw() -> tuple[torch.Tensor, torch.Tensor]:
    """(float [1797, 8, 8] with values 0..16, int64 labels [1797]) from scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the digits dataset needs scikit-learn: install resprune[demo] "
                        "(pip install 'resprune[demo]')") from None
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images, labels


def to_uint8_images(raw: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """float [N, 8, 8] in 0..16 -> uint8 [N, 1, size, size] in 0..255 (bilinear upsampling)."""
    x = (raw / 16.0 * 255.0).unsqueeze(1)
    if size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False)
    return x.round().clamp_(0, 255).to(torch.uint8)


def load_digits_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_images, train_labels, test_images, test_labels)``; images uint8 [N,1,16,16]."""
    raw, labels = _load_raw()
    images = to_uint8_images(raw)
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
