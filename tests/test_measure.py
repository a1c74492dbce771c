"""Measurements: parameter / MAC counts against arithmetic and published figures, depth,
exact accuracy on known outputs, latency, profile."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from resprune import UserError, create
from resprune.measure import (
    count_macs,
    count_params,
    depth,
    evaluate,
    latency,
    profile,
    recalibrate_batchnorm,
)


def cifar_resnet_params(n: int, num_classes: int = 10, shortcut: str = "A") -> int:
    """Parameters of a CIFAR ResNet with n basic blocks per stage, by hand."""
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    cin = 16
    for w in (16, 32, 64):
        for _ in range(n):
            total += cin * w * 9 + 2 * w + w * w * 9 + 2 * w
            if shortcut == "B" and cin != w:
                total += cin * w + 2 * w
            cin = w
    return total + 64 * num_classes + num_classes


def cifar_resnet_macs(n: int, num_classes: int = 10, shortcut: str = "A") -> int:
    """Multiply-accumulates of convolutions + fc on one 32x32 image, by hand."""
    total = 3 * 16 * 9 * 32 * 32
    cin, size = 16, 32
    for s, w in enumerate((16, 32, 64)):
        for i in range(n):
            if s > 0 and i == 0:
                size //= 2
            total += (cin * w * 9 + w * w * 9) * size * size
            if shortcut == "B" and cin != w:
                total += cin * w * size * size
            cin = w
    return total + 64 * num_classes


def test_param_counts():
    assert count_params(create("resnet56", shortcut="A")) == 853018 == cifar_resnet_params(9)
    assert count_params(create("resnet56", shortcut="B")) == 855770 == cifar_resnet_params(
        9, shortcut="B")
    assert count_params(create("resnet50", num_classes=1000)) == 25557032  # torchvision
    # a priority gate per erasable unit is one more parameter each (25 of 27 in resnet56: all but
    # the first unit of stages 2 and 3, whose shortcut changes width)
    assert count_params(create("resnet56", gates=True)) == 853018 + 25


def test_mac_counts():
    assert count_macs(create("resnet56"), (3, 32, 32)) == 125485696 == cifar_resnet_macs(9)
    assert count_macs(create("resnet56", shortcut="B"), (3, 32, 32)) == cifar_resnet_macs(
        9, shortcut="B")
    assert count_macs(create("resnet20"), (3, 32, 32)) == cifar_resnet_macs(3)
    assert count_macs(create("resnet50", num_classes=1000), (3, 224, 224)) == 4089184256


def test_count_macs_leaves_mode_and_device_alone():
    net = create("resnet8", width=4)
    net.train()
    net.layer1.eval()
    count_macs(net, (3, 16, 16))
    assert net.training and not net.layer1.training and net.layer2.training
    assert net.bn1.num_batches_tracked.item() == 0  # no BN statistics were updated
    assert next(net.parameters()).device.type == "cpu"


class DataDependent(nn.Module):
    """A forward that reads a value back (cannot run on the meta device)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.bn(self.conv(x)) * (1.0 if float(x.sum()) >= 0 else 1.0)
        return self.fc(x.mean(dim=(2, 3)))


def test_count_macs_falls_back_to_a_real_pass():
    net = DataDependent().train()
    assert count_macs(net, (3, 10, 10)) == 3 * 8 * 9 * 10 * 10 + 8 * 5
    assert net.training and net.bn.num_batches_tracked.item() == 0
    assert depth(net) == 2 and count_params(net) == 3 * 8 * 9 + 2 * 8 + 8 * 5 + 5


def test_count_macs_rejects_bad_shapes():
    with pytest.raises(UserError, match=r"three positive integers \(C, H, W\)"):
        count_macs(create("resnet8", width=4), (1, 3, 32, 32))


def test_depth():
    assert depth(create("resnet56", shortcut="A")) == 56
    assert depth(create("resnet56", shortcut="B")) == 56  # projection convs do not count
    assert depth(create("resnet50", num_classes=1000)) == 50
    assert depth(create("resnet20")) == 20


def test_depth_after_erasing_a_unit():
    from resprune import build

    spec = create("resnet56").spec()
    u = spec["stages"][0][3]
    spec["stages"][0][3] = {"erased": True, "in": u["in"], "out": u["out"]}
    net = build(spec)
    assert depth(net) == 54
    assert count_params(net) == 853018 - 2 * (16 * 16 * 9 + 2 * 16)


class FixedLogits(nn.Module):
    """A 'model' whose output for sample i is row i of a fixed table (input = sample index)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone(), requires_grad=False)

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()]


def index_loader(labels: torch.Tensor, batch_size: int):
    idx = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1)
    return [(idx[i:i + batch_size], labels[i:i + batch_size])
            for i in range(0, len(labels), batch_size)]


def test_evaluate_exact_top1_top5_and_loss():
    # 7 classes; true class ranks: 1st, 3rd, 6th, 1st, 5th, 2nd
    ranks = [0, 2, 5, 0, 4, 1]
    base = torch.tensor([7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    table = base.repeat(len(ranks), 1)  # class c has rank c
    labels = torch.tensor(ranks)
    r = evaluate(FixedLogits(table), index_loader(labels, 4))
    assert r["n"] == 6
    assert r["top1"] == 2 / 6
    assert r["top5"] == 5 / 6
    expected = torch.nn.functional.cross_entropy(table, labels).item()
    assert r["loss"] == pytest.approx(expected, rel=1e-6)


def test_evaluate_top5_with_fewer_than_five_classes():
    table = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [1.0, 2.0, 0.0]])
    r = evaluate(FixedLogits(table), index_loader(torch.tensor([0, 0, 1]), 2))
    assert r["top1"] == 2 / 3 and r["top5"] == 1.0


def test_evaluate_restores_mode_and_refuses_empty():
    net = create("resnet8", num_classes=3, width=4)
    net.train()
    x = torch.randn(5, 3, 8, 8)
    r = evaluate(net, [(x, torch.zeros(5, dtype=torch.long))])
    assert net.training and r["n"] == 5
    net.eval()
    with torch.no_grad():
        pred = net(x).argmax(1)
    assert r["top1"] == (pred == 0).float().mean().item()
    assert evaluate(net, [(x, torch.zeros(5, dtype=torch.long))], precision="bf16")["n"] == 5
    with pytest.raises(UserError, match="empty"):
        evaluate(net, [])


# -- BatchNorm re-estimation ------------------------------------------------------------------

def _bn_inputs(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Each BatchNorm layer's input on each batch, seen in train mode (batch statistics, so
    independent of the running statistics) without touching the model's buffers."""
    seen: dict[str, list[torch.Tensor]] = {}
    probe = copy.deepcopy(model).train()
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append(
        i[0].detach())) for n, m in probe.named_modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for x in batches:
            probe(x)
    for h in hooks:
        h.remove()
    return seen


def test_recalibrate_batchnorm_sets_exact_statistics_of_the_images_read():
    torch.manual_seed(0)
    model = create("resnet8", num_classes=10).eval()
    for m in model.modules():  # stale statistics, as after a cut
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
            m.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    batches = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    loader = [(x, torch.zeros(4, dtype=torch.long)) for x in batches]
    # 5 images asked: whole batches are read, so 2 batches (8 images)
    assert recalibrate_batchnorm(model, loader, samples=5) == 8
    assert not model.training
    inputs = _bn_inputs(model, batches[:2])
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            # momentum None while reading: the plain average of the two batches' statistics
            want_mean = sum(x.mean((0, 2, 3)) for x in inputs[name]) / 2
            want_var = sum(x.var((0, 2, 3), unbiased=True) for x in inputs[name]) / 2
            torch.testing.assert_close(m.running_mean, want_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(m.running_var, want_var, rtol=1e-5, atol=1e-6)
            assert m.momentum == 0.1 and int(m.num_batches_tracked) == 2
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())


def test_recalibrate_batchnorm_restores_train_mode_and_refuses_bad_input():
    model = create("resnet8", num_classes=10).train()
    loader = [(torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))]
    assert recalibrate_batchnorm(model, loader, samples=100) == 2 and model.training
    assert recalibrate_batchnorm(nn.Linear(3, 2), loader, samples=10) == 0
    with pytest.raises(UserError, match="at least 1 image, got 0"):
        recalibrate_batchnorm(model, loader, samples=0)
    with pytest.raises(UserError, match="read no images: the training loader is empty"):
        recalibrate_batchnorm(model, [], samples=10)


def test_latency_positive_medians_for_requested_batch_sizes():
    net = create("resnet8", width=4)
    net.train()
    r = latency(net, (3, 16, 16), batch_sizes=(1, 4), warmup=1, repeats=3)
    assert set(r) == {1, 4}
    for bs, v in r.items():
        assert v["median_ms"] > 0 and v["repeats"] == 3
        assert v["images_per_s"] == pytest.approx(bs / (v["median_ms"] / 1e3))
    assert net.training  # timed on a copy
    r = latency(net, (3, 16, 16), batch_sizes=(2,), warmup=0, repeats=1, precision="bf16")
    assert r[2]["median_ms"] > 0


def test_latency_rejects_bad_arguments():
    net = create("resnet8", width=4)
    with pytest.raises(UserError, match="batch sizes must be positive integers"):
        latency(net, (3, 8, 8), batch_sizes=(0,))
    with pytest.raises(UserError, match="repeats must be an integer >= 1"):
        latency(net, (3, 8, 8), batch_sizes=(1,), repeats=0)
    with pytest.raises(UserError, match="unknown precision"):
        latency(net, (3, 8, 8), batch_sizes=(1,), precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device is available"):
            latency(net, (3, 8, 8), batch_sizes=(1,), device="cuda")


def test_profile_combines_everything():
    net = create("resnet20")
    p = profile(net, (3, 32, 32), latency_batch_sizes=(1,), warmup=0, repeats=2)
    assert p["params"] == 269722 == cifar_resnet_params(3)
    assert p["macs"] == cifar_resnet_macs(3) and p["depth"] == 20
    assert p["input_shape"] == [3, 32, 32] and p["latency"][1]["median_ms"] > 0
    assert profile(net, (3, 32, 32), latency_batch_sizes=())["latency"] == {}
