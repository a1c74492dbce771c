from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR10_MINI = REPO.parent / "shared" / "datasets" / "cifar10-mini"


# One intra-op thread by default: the suite's models are tiny (overhead-bound), and with two
# OpenMP threads a busy machine makes torch spin-wait (measured 40x slower under contention).
# A test marked ``@pytest.mark.threads(n)`` runs with n threads instead (the multi-threaded
# paths: onnxruntime sessions follow torch's thread count), restored afterwards.
DEFAULT_THREADS = 1
torch.set_num_threads(DEFAULT_THREADS)


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
def _seed_and_threads(request):
    torch.manual_seed(0)
    marker = request.node.get_closest_marker("threads")
    n = torch.get_num_threads()
    if marker is not None:
        torch.set_num_threads(int(marker.args[0]))
    yield
    torch.set_num_threads(n)


QUIET = ["--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of a tiny ResNet-8 trained one epoch on synthetic data (one per test module)."""
    from resprune.cli.main import main

    run = tmp_path_factory.mktemp("base") / "resnet8"
    assert main(["train", "--model", "resnet8", "--width", "4", "--data", "synthetic",
                 "--epochs", "1", *QUIET, "--out", str(run)]) == 0
    return run


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
