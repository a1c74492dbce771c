from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR10_MINI = REPO.parent / "shared" / "datasets" / "cifar10-mini"


# One intra-op thread: the suite's models are tiny (overhead-bound), and with two OpenMP
# threads a busy machine makes torch spin-wait (measured 40x slower under contention).
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _image_cache(tmp_path_factory):
    """Decoded image folders are cached in a temporary directory, never in ~/.cache."""
    import os

    old = os.environ.get("RESPRUNE_CACHE_DIR")
    os.environ["RESPRUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("image-cache"))
    yield
    if old is None:
        os.environ.pop("RESPRUNE_CACHE_DIR", None)
    else:
        os.environ["RESPRUNE_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cifar10_mini() -> Path:
    if not (CIFAR10_MINI / "cifar-10-batches-py").is_dir():
        pytest.skip("../shared/datasets/cifar10-mini is not present (only in the dev checkout)")
    return CIFAR10_MINI


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial affine params and running stats (for exactness tests)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model
