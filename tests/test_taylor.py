"""VACL's Taylor group score: first-order loss change of removing a channel group.

The score of group g on one batch is ``(sum_{s in g} w_s dL/dw_s)^2``: the square of the
derivative of the loss along the direction that shrinks the group's weights towards zero. It is
checked against that derivative taken by finite differences in float64, on every kind of group
(a residual-stream group spanning several layers and a block-internal filter group).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import resprune
from resprune import UserError, distributed, vacl
from resprune.data.loader import InMemoryLoader
from resprune.vacl.groups import CROSS, FILTER

SHAPE = (3, 16, 16)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = resprune.create("resnet8", width=4, num_classes=10).double()
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():  # arbitrary BN state, so no group is trivially unimportant
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.weight.data = (0.5 + torch.rand(n, generator=g)).double()
            mod.bias.data = (0.3 * torch.randn(n, generator=g)).double()
            mod.running_mean.copy_(0.3 * torch.randn(n, generator=g))
            mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return m


def _batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(8, *SHAPE, generator=g, dtype=torch.float64),
             torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def _shrunk_loss(model, groups, group, eps, x, y) -> float:
    """Eval-mode loss with the group's producer filters and BN gamma/beta scaled by 1 - eps."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for s in vacl.group_slices(m, groups, [group.name]):
            getattr(m.get_submodule(s.module), s.param)[torch.tensor(s.channels)] *= 1 - eps
        return float(F.cross_entropy(m(x), y))


def test_taylor_score_is_the_squared_derivative_along_the_group():
    model = _model()
    groups = vacl.discover_groups(model, SHAPE)
    batches = _batches(2)
    scores = vacl.group_scores(model, groups, score="taylor", loader=batches, batches=2)
    kinds = {}
    for g in groups:
        kinds.setdefault(g.kind, g)
    assert set(kinds) == {CROSS, FILTER}
    eps = 1e-6
    for g in kinds.values():
        derivs = []
        for x, y in batches:
            up, down = (_shrunk_loss(model, groups, g, e, x, y) for e in (eps, -eps))
            derivs.append((up - down) / (2 * eps))  # = -sum w dL/dw
        want = sum(d * d for d in derivs) / len(derivs)
        assert float(scores[g.index]) == pytest.approx(want, rel=1e-5, abs=1e-14)
    assert float(scores.min()) > 0


def test_taylor_leaves_the_model_as_it_was_and_zero_groups_score_zero():
    model = _model().train()
    groups = vacl.discover_groups(model, SHAPE)
    victim = next(g for g in groups if g.kind == CROSS)
    with torch.no_grad():
        for s in vacl.group_slices(model, groups, [victim.name]):
            getattr(model.get_submodule(s.module), s.param)[torch.tensor(s.channels)] = 0
    state = copy.deepcopy(model.state_dict())
    scores = vacl.group_scores(model, groups, score="taylor", loader=_batches(1), batches=1)
    assert float(scores[victim.index]) == 0.0
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_taylor_reads_batches_from_epoch_zero_whatever_the_loader_did():
    model = _model().float()
    groups = vacl.discover_groups(model, SHAPE)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (64, 3, 16, 16), generator=g, dtype=torch.uint8)
    loader = InMemoryLoader(x, torch.arange(64) % 10, 16, train=True, mean=(0.5,) * 3,
                            std=(0.25,) * 3, shard=(0, 1))
    first = vacl.group_scores(model, groups, score="taylor", loader=loader, batches=2)
    for _ in loader:  # move the loader on an epoch
        pass
    assert torch.equal(vacl.group_scores(model, groups, score="taylor", loader=loader,
                                         batches=2), first)


def test_two_processes_give_the_one_process_scores(monkeypatch):
    """Each process holds half of every global batch; the per-group sums are averaged over
    the processes before squaring, so the scores are those of one process on the whole."""
    model = _model()
    groups = vacl.discover_groups(model, SHAPE)
    (x, y), = _batches(1)
    one = vacl.group_scores(model, groups, score="taylor", loader=[(x, y)], batches=1)
    halves = [[(x[:4], y[:4])], [(x[4:], y[4:])]]
    # process 0's all-reduce adds what process 1 computed on its half
    from resprune.vacl import taylor

    seen = []
    monkeypatch.setattr(distributed, "world_size", lambda: 1)
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda t: seen.append(t.clone()))
    taylor.taylor_scores(model, groups, halves[1], 1)
    other = seen.pop()
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda t: t.add_(other))
    two = taylor.taylor_scores(model, groups, halves[0], 1)
    assert torch.allclose(two, one, rtol=1e-9, atol=0)


def test_prune_takes_ready_scores_and_refuses_taylor_without_them():
    model = _model().float()
    groups = vacl.discover_groups(model, SHAPE)
    with pytest.raises(UserError, match="group score 'taylor' reads training data"):
        vacl.prune(copy.deepcopy(model), SHAPE, target_params_reduction=0.2, groups=groups,
                   score="taylor")
    with pytest.raises(UserError, match=f"one number per channel group \\({len(groups)}\\)"):
        vacl.prune(copy.deepcopy(model), SHAPE, target_params_reduction=0.2, groups=groups,
                   scores=torch.zeros(3))
    with pytest.raises(UserError, match="reads training batches: pass loader="):
        vacl.group_scores(model, groups, score="taylor")
    # the ranking follows the scores given: reversing them removes other groups
    rms = vacl.group_scores(model, groups)
    same = vacl.prune(copy.deepcopy(model), SHAPE, target_params_reduction=0.2, groups=groups,
                      scores=rms)
    plain = vacl.prune(copy.deepcopy(model), SHAPE, target_params_reduction=0.2, groups=groups)
    assert same["removed_groups"] == plain["removed_groups"]
    flipped = vacl.prune(copy.deepcopy(model), SHAPE, target_params_reduction=0.2,
                         groups=groups, scores=-rms)
    assert flipped["removed_groups"] != plain["removed_groups"]
