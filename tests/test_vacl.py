"""VACL: group discovery, the variance-aware regularizer, scores and physical pruning."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch
from torch import nn

import resprune
from resprune import UserError, vacl
from resprune.measure import count_macs, count_params
from resprune.models import PadShortcut, build, create, model_spec, spec_of
from resprune.vacl.groups import BN, CROSS, FILTER, IN, OUT, PAD_IN, PAD_OUT

CIFAR = (3, 32, 32)


def tiny_resnext() -> nn.Module:
    return create("resnext29", cardinality=2, base_width=4, width=8)


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Arbitrary BN affine parameters and running statistics (so nothing is trivially zero)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g).to(m.weight)
            m.bias.data = 0.3 * torch.randn(n, generator=g).to(m.bias)
            m.running_mean.copy_(0.5 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def zero_group(model: nn.Module, group: vacl.ChannelGroup) -> None:
    """Zero a group's producer filters and their BN gamma/beta (consumers untouched)."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for m in group.members:
            mod = mods[m.module]
            if m.role == OUT:
                mod.weight[m.channel] = 0
                if mod.bias is not None:
                    mod.bias[m.channel] = 0
            elif m.role == BN:
                mod.weight[m.channel] = 0
                mod.bias[m.channel] = 0


def bn_of(conv_name: str) -> str:
    """The BN that follows a conv in resprune's naming (independent of the traced bn_parent)."""
    if conv_name.endswith("downsample.0"):
        return conv_name[:-1] + "1"
    head, _, tail = conv_name.rpartition("conv")
    return head + "bn" + tail


# -- group discovery ------------------------------------------------------------------------------
def test_counts_resnet56_shortcut_b():
    gs = vacl.discover_groups(create("resnet56", shortcut="B"), CIFAR)
    assert gs.counts()[CROSS] == 16 + 32 + 64
    assert gs.counts()[FILTER] == 9 * (16 + 32 + 64)  # conv1 of each of 27 basic blocks
    assert [name for name, _ in gs.skipped] == [f"fc[{i}]" for i in range(10)]


def test_counts_resnet56_shortcut_a():
    gs = vacl.discover_groups(create("resnet56", shortcut="A"), CIFAR)
    # 16 stage-1 channels run through all three stages; stage 2 adds 16 new (padded) channels,
    # stage 3 adds 32: 16 + 16 + 32 = 64 streams.
    assert gs.counts()[CROSS] == 64
    assert gs.counts()[FILTER] == 9 * (16 + 32 + 64)


@pytest.fixture(scope="module")
def resnet50_groups() -> vacl.GroupSet:
    return vacl.discover_groups(create("resnet50", num_classes=10), (3, 32, 32))


def test_counts_resnet50(resnet50_groups):
    gs = resnet50_groups
    assert gs.counts()[CROSS] == 256 + 512 + 1024 + 2048
    inner = 3 * 2 * 64 + 4 * 2 * 128 + 6 * 2 * 256 + 3 * 2 * 512  # conv1 + conv2 per bottleneck
    stem = 64  # the stem feeds projection shortcuts only: a filter group of its own
    assert gs.counts()[FILTER] == inner + stem
    stem_groups = [g for g in gs if g.members[0].module == "conv1"]
    assert len(stem_groups) == 64 and all(g.kind == FILTER for g in stem_groups)


def test_counts_resnext_and_gates_and_erased_units():
    gs = vacl.discover_groups(tiny_resnext(), CIFAR)
    assert gs.counts() == {CROSS: 32 + 64 + 128, FILTER: 3 * 2 * (8 + 16 + 32) + 8}
    spec = model_spec("resnet20", width=4, gates=True)
    spec["stages"][1][2] = {"erased": True, "in": 8, "out": 8}
    gs = vacl.discover_groups(build(spec), CIFAR)
    assert gs.counts() == {CROSS: 4 + 4 + 8, FILTER: 3 * 4 + 2 * 8 + 3 * 16}


def test_option_a_couples_channels_through_the_index_map():
    model = create("resnet8", shortcut="A", width=4)  # stages 4, 8, 16 channels
    gs = vacl.discover_groups(model, CIFAR)
    idx2 = model.layer2[0].downsample.index
    idx3 = model.layer3[0].downsample.index
    for j in range(4):
        (g,) = [g for g in gs if any(m.module == "conv1" and m.role == OUT and m.channel == j
                                     for m in g.members)]
        k2, k3 = idx2.index(j), idx3.index(idx2.index(j))
        assert g.kind == CROSS
        assert {m for m in g.members if m.role == OUT} == {
            vacl.Member("conv1", OUT, j), vacl.Member("layer1.0.conv2", OUT, j),
            vacl.Member("layer2.0.conv2", OUT, k2), vacl.Member("layer3.0.conv2", OUT, k3)}
        assert vacl.Member("layer2.0.downsample", PAD_IN, j) in g.members
        assert vacl.Member("layer2.0.downsample", PAD_OUT, k2) in g.members
        assert vacl.Member("fc", IN, k3) in g.members
    # a zero-padded stage-2 channel starts its own stream
    (g,) = [g for g in gs if vacl.Member("layer2.0.conv2", OUT, 0) in g.members]
    assert idx2[0] == -1
    assert {m.module for m in g.members if m.role == OUT} == {"layer2.0.conv2", "layer3.0.conv2"}


def test_discovery_keeps_mode_and_statistics():
    model = create("resnet8", width=4)
    model.train()
    before = copy.deepcopy(model.state_dict())
    vacl.discover_groups(model, CIFAR)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# -- regularizer ---------------------------------------------------------------------------------
def reference_terms(model: nn.Module, gs: vacl.GroupSet, include_bn: bool,
                    include_consumers: bool) -> list[tuple[str, list[torch.Tensor]]]:
    """Per group: kind and the flat slice of every member layer, built with plain indexing."""
    mods = dict(model.named_modules())
    out = []
    for g in gs:
        slices = []
        for m in g.members:
            mod = mods[m.module]
            if m.role == OUT:
                parts = [mod.weight[m.channel].flatten()]
                if include_bn:
                    bn = mods[bn_of(m.module)]
                    parts += [bn.weight[m.channel:m.channel + 1], bn.bias[m.channel:m.channel + 1]]
                slices.append(torch.cat(parts))
            elif m.role == IN and include_consumers:
                w = mod.weight
                if w.dim() == 2:
                    slices.append(w[:, m.channel])
                else:
                    per_in = w.shape[1]
                    blk, col = divmod(m.channel, per_in)
                    rows = w.shape[0] // mod.groups
                    slices.append(w[blk * rows:(blk + 1) * rows, col].flatten())
        out.append((g.kind, slices))
    return out


def reference_value(terms, form: str, beta: float) -> torch.Tensor:
    total = 0.0
    for kind, slices in terms:
        flat = torch.cat(slices)
        p, norm = flat.numel(), flat.norm()
        if kind == FILTER:
            total = total + math.sqrt(p) * norm
            continue
        n = torch.stack([s.norm() for s in slices])
        mu, var = n.mean(), n.var(unbiased=False)
        if form == "moments":
            total = total + math.sqrt(p) * math.sqrt(len(n)) * torch.sqrt(mu ** 2 + beta * var)
        elif form == "additive":
            total = total + math.sqrt(p) * norm + beta * var
        else:
            total = total + math.sqrt(p) * (mu + beta * var.sqrt())
    return total


@pytest.mark.parametrize("include_bn,include_consumers", [(True, False), (False, False),
                                                          (True, True)])
def test_moments_with_beta_one_is_group_lasso(include_bn, include_consumers):
    model = create("resnet20", shortcut="A", width=4)
    randomize_bn(model)
    reg = vacl.Regularizer(model, beta=1.0, lam=1.0, include_bn=include_bn,
                           include_consumers=include_consumers)
    lasso = 0.0
    for _, slices in reference_terms(model, reg.groups, include_bn, include_consumers):
        flat = torch.cat(slices)
        lasso += math.sqrt(flat.numel()) * flat.double().norm().item()
    assert reg(model).item() == pytest.approx(lasso, rel=1e-6)


@pytest.mark.parametrize("form", vacl.FORMS)
def test_forms_match_a_plain_reference(form):
    model = tiny_resnext().double()
    randomize_bn(model)
    reg = vacl.Regularizer(model, form=form, beta=2.5, lam=0.5, include_consumers=True)
    ref = reference_value(reference_terms(model, reg.groups, True, True), form, 2.5)
    assert reg(model).item() == pytest.approx(0.5 * ref.item(), rel=1e-9)


@pytest.mark.parametrize("form", vacl.FORMS)
@pytest.mark.parametrize("arch", ["resnet8-A", "resnext"])
def test_gradient_matches_finite_differences(form, arch):
    torch.manual_seed(1)
    model = (create("resnet8", shortcut="A", width=2, gates=True) if arch == "resnet8-A"
             else tiny_resnext()).double()
    randomize_bn(model)
    with torch.no_grad():  # one member of one cross group exactly zero: gradients stay finite
        model.layer1[0].conv2.weight[0] = 0
        model.layer1[0].bn2.weight[0] = 0
        model.layer1[0].bn2.bias[0] = 0
    reg = vacl.Regularizer(model, form=form, beta=3.0, lam=1.0, include_consumers=True)
    model.zero_grad()
    reg(model).backward()
    rng = random.Random(0)
    params = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    checked = 0
    for name, p in rng.sample(params, 12):
        flat, grad = p.data.view(-1), p.grad.view(-1)
        for i in rng.sample(range(flat.numel()), min(3, flat.numel())):
            if flat[i] == 0:
                continue  # the norm of an exactly-zero member is not differentiable there
            h, old = 1e-4, flat[i].item()
            flat[i] = old + h
            up = reg(model).item()
            flat[i] = old - h
            down = reg(model).item()
            flat[i] = old
            fd = (up - down) / (2 * h)
            assert grad[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-7), (name, i)
            checked += 1
    assert checked >= 20
    assert all(torch.isfinite(p.grad).all() for _, p in params)


def test_variance_term_penalises_unequal_members_at_equal_group_norm():
    model = create("resnet8", shortcut="B", width=4).double()
    gs = vacl.discover_groups(model, CIFAR)
    g = next(g for g in gs if g.kind == CROSS)  # stem, layer1.0.conv2 (+ their BNs)
    regs = {beta: vacl.Regularizer(model, beta=beta, lam=1.0, include_bn=False, groups=gs)
            for beta in (1.0, 4.0)}
    a, b = [model.get_submodule(m.module).weight for m in g.producers()[:2]]
    i, j = g.producers()[0].channel, g.producers()[1].channel
    with torch.no_grad():  # equal members, then the same total norm split 0.1 : 0.9
        a[i] *= 1 / a[i].norm()
        b[j] *= 1 / b[j].norm()
        equal = {beta: r.per_group(model)[g.index].item() for beta, r in regs.items()}
        a[i] *= math.sqrt(0.2)
        b[j] *= math.sqrt(1.8)
        unequal = {beta: r.per_group(model)[g.index].item() for beta, r in regs.items()}
    assert unequal[1.0] == pytest.approx(equal[1.0], rel=1e-9)  # group lasso: norm only
    assert unequal[4.0] > 1.2 * equal[4.0]


def test_regularizer_is_a_loss_term_and_rejects_a_pruned_model():
    model = create("resnet8", width=4)
    reg = vacl.Regularizer(model, lam=1e-3)
    x, y = torch.randn(4, *CIFAR), torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y) + reg(model)
    loss.backward()
    assert model.layer1[0].conv2.weight.grad.abs().sum() > 0
    assert "form='moments'" in repr(reg)
    vacl.prune(model, CIFAR, target_params_reduction=0.2)
    with pytest.raises(UserError, match="changed shape.*build a new Regularizer"):
        reg(model)


@pytest.mark.parametrize("arch,kwargs", [
    ("A", {}), ("A", {"form": "additive"}), ("A", {"form": "mean_std", "include_bn": False}),
    ("A", {"include_consumers": True}), ("A", {"only": "every third"}), ("B", {}),
    ("resnext", {})])
def test_add_grad_is_backpropagation_of_the_term_bit_for_bit(arch, kwargs):
    """``reg.add_grad_(model)`` after backward leaves exactly the gradients of backpropagating
    ``loss + reg(model)`` and returns the term's value; a frozen parameter gets no gradient
    either way, and one without a gradient yet gets the term's alone."""
    torch.manual_seed(0)
    model = (create("resnext29", width=8, cardinality=2, base_width=2) if arch == "resnext"
             else create("resnet8", width=4, shortcut=arch))
    reg = vacl.Regularizer(model, lam=0.3, **{k: v for k, v in kwargs.items() if k != "only"})
    if "only" in kwargs:
        reg.select([g.name for g in reg.groups][::3])
    x, y = torch.randn(4, *CIFAR), torch.tensor([0, 1, 2, 3])
    w = model.layer1[0].conv1.weight

    def grads(fused: bool, frozen: bool = False, drop: bool = False):
        model.zero_grad(set_to_none=True)
        w.requires_grad_(not frozen)
        loss = nn.functional.cross_entropy(model(x), y)
        if fused:
            loss.backward()
            if drop:
                w.grad = None
            value = reg.add_grad_(model)
        else:
            value = reg(model)
            (loss + value).backward()
        w.requires_grad_(True)
        return {n: p.grad.clone() for n, p in model.named_parameters()
                if p.grad is not None}, value

    for frozen in (False, True):
        (ref, v_ref), (got, v_got) = grads(False, frozen), grads(True, frozen)
        assert torch.equal(v_got, v_ref.detach()) and not v_got.requires_grad
        assert got.keys() == ref.keys() and ("layer1.0.conv1.weight" in got) == (not frozen)
        for n in ref:
            assert torch.equal(got[n], ref[n]), n
    got, _ = grads(True, drop=True)
    model.zero_grad(set_to_none=True)
    (alone,) = torch.autograd.grad(reg(model), [w])
    assert torch.equal(got["layer1.0.conv1.weight"], alone) and alone.abs().sum() > 0


def test_group_scores_are_rms_and_zero_for_zeroed_groups():
    model = create("resnet8", shortcut="B", width=4)
    randomize_bn(model)
    gs = vacl.discover_groups(model, CIFAR)
    zero_group(model, gs[3])
    scores = vacl.group_scores(model, gs, score="rms")
    assert scores[3] == 0
    terms = reference_terms(model, gs, True, False)
    flat = torch.cat(terms[7][1])
    assert scores[7].item() == pytest.approx(flat.norm().item() / math.sqrt(flat.numel()))


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_layer_rms_scores_ignore_a_layers_weight_scale(shortcut):
    """Scaling one layer (conv filters and its BN gamma/beta) by c changes raw RMS scores but
    not layer-normalised ones: each member is divided by its own layer's mean channel RMS."""
    model = create("resnet8", shortcut=shortcut, width=4)
    randomize_bn(model)
    gs = vacl.discover_groups(model, CIFAR)
    zero_group(model, gs[2])
    rms0 = vacl.group_scores(model, gs, score="rms")
    layer0 = vacl.group_scores(model, gs, score="layer_rms")
    with torch.no_grad():
        for name in ("layer2.0.conv2", "layer2.0.bn2", "layer1.0.conv1", "layer1.0.bn1"):
            mod = dict(model.named_modules())[name]
            mod.weight.mul_(7.0)
            if getattr(mod, "bias", None) is not None:
                mod.bias.mul_(7.0)
    rms1 = vacl.group_scores(model, gs, score="rms")
    layer1 = vacl.group_scores(model, gs, score="layer_rms")
    assert not torch.allclose(rms0, rms1)
    torch.testing.assert_close(layer1, layer0, rtol=1e-6, atol=0)  # float32 weights
    assert layer0[2] == 0 and rms0[2] == 0  # a zeroed group still scores exactly 0
    assert (layer0 > 0).sum() == len(gs) - 1


def test_layer_rms_of_a_single_member_group_is_its_rms_over_its_layers_mean():
    """Intra-block filter groups have one member: layer_rms = rms / the mean channel RMS of the
    layer (over the channels the groups cover), computed here channel by channel."""
    model = create("resnet8", shortcut="B", width=4)
    randomize_bn(model)
    gs = vacl.discover_groups(model, CIFAR)
    raw = vacl.group_scores(model, gs, include_bn=False, score="rms")
    norm = vacl.group_scores(model, gs, include_bn=False, score="layer_rms")
    table = dict(model.named_modules())
    filters = [g for g in gs if g.kind == FILTER]
    assert filters
    for g in filters:
        (prod,) = [m for m in g.members if m.role == OUT]
        w = table[prod.module].weight.detach().double()
        per_channel = w.reshape(w.shape[0], -1).pow(2).mean(1).sqrt()
        assert raw[g.index].item() == pytest.approx(per_channel[prod.channel].item(), rel=1e-6)
        expected = per_channel[prod.channel] / per_channel.mean()
        assert norm[g.index].item() == pytest.approx(expected.item(), rel=1e-6)


def test_group_scores_reject_an_unknown_score():
    model = create("resnet8", width=4)
    gs = vacl.discover_groups(model, CIFAR)
    with pytest.raises(UserError, match="unknown group score 'l1'.*rms, layer_rms"):
        vacl.group_scores(model, gs, score="l1")


# -- pruning -------------------------------------------------------------------------------------
def _zero_and_prune(model, shape, chosen, gs):
    for g in chosen:
        zero_group(model, g)
    model.eval()
    x = torch.randn(3, *shape, dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        before = model(x)
    report = vacl.prune(model, shape, threshold=1e-9, groups=gs)
    with torch.no_grad():
        after = model(x)
    return before, after, report


@pytest.mark.parametrize("arch", ["A", "B", "resnext", "resnet50"])
def test_removing_zero_groups_leaves_logits_unchanged(arch, request):
    rng = random.Random(0)
    shape = CIFAR
    if arch in ("A", "B"):
        model = create("resnet20", shortcut=arch, width=8)
    elif arch == "resnext":
        model = tiny_resnext()
    else:  # ImageNet stem and bottlenecks; float64 so that 1e-5 is far above rounding noise
        model = create("resnet50", num_classes=10).double()
    randomize_bn(model)
    gs = (request.getfixturevalue("resnet50_groups") if arch == "resnet50"
          else vacl.discover_groups(model, shape))
    mods = dict(model.named_modules())

    def grouped(g):
        return any(getattr(mods[m.module], "groups", 1) > 1 for m in g.members
                   if m.role in (OUT, IN))

    chosen = rng.sample(gs.of_kind(CROSS), 6)
    chosen += rng.sample([g for g in gs.of_kind(FILTER) if not grouped(g)], 6)
    if arch == "resnext":  # a bundle: one conv1 filter in each cardinal group of layer2.1
        chosen += [g for g in gs if g.members[0] in (vacl.Member("layer2.1.conv1", OUT, 3),
                                                   vacl.Member("layer2.1.conv1", OUT, 11))]
    if arch == "resnet50":
        chosen.append(next(g for g in gs if g.members[0] == vacl.Member("conv1", OUT, 5)))
    before, after, report = _zero_and_prune(model, shape, chosen, gs)
    assert report["groups_removed"] == len(chosen)
    assert sorted(report["removed_groups"]) == sorted(g.name for g in chosen)
    assert report["params_after"] < report["params_before"]
    assert torch.allclose(before, after, rtol=0, atol=1e-5), (before - after).abs().max()


def test_pruned_model_saves_loads_and_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = create("resnet20", shortcut="A", width=8)
    randomize_bn(model)
    report = vacl.prune(model, CIFAR, target_params_reduction=0.3)
    assert report["params_reduction"] >= 0.3
    assert json.loads(json.dumps(report)) == report
    assert report["params_after"] == sum(p.numel() for p in model.parameters())
    resprune.save(model, tmp_path / "run")
    loaded = resprune.load(tmp_path / "run")
    assert spec_of(loaded) == spec_of(model)
    model.eval()
    loaded.eval()
    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("target", ["params", "macs"])
def test_target_reduction_is_reached_with_one_global_ranking(target):
    torch.manual_seed(0)
    model = create("resnet20", shortcut="B", width=8)
    randomize_bn(model)
    gs = vacl.discover_groups(model, CIFAR)
    scores = vacl.group_scores(model, gs)
    report = vacl.prune(model, CIFAR, groups=gs, **{f"target_{target}_reduction": 0.4})
    assert report["target_reached"] and report[f"{target}_reduction"] >= 0.4
    # one global ranking: every removed group scores at most as high as every kept group that
    # could still be removed (kept groups in layers down to one channel are not candidates)
    removed = set(report["removed_groups"])
    mods = dict(model.named_modules())

    def removable(g):
        return all(mods[m.module].weight.shape[0 if m.role == OUT else 1] > 1
                   for m in g.members if m.role in (OUT, IN))

    worst_removed = max(s for g, s in zip(gs, scores.tolist()) if g.name in removed)
    best_kept = min(s for g, s in zip(gs, scores.tolist())
                    if g.name not in removed and removable(g))
    assert worst_removed <= best_kept
    assert {g.kind for g in gs if g.name in removed} == {CROSS, FILTER}


@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("target", ["params", "macs"])
def test_round_to_keeps_widths_multiples_and_reaches_the_target(shortcut, target):
    """round_to=4: every pruned conv keeps a multiple of 4 channels (a layer already at its
    full width may keep it), the target is still reached, and the rounded selection keeps
    the strongest of a layer's groups (rounding up brings back the best removed ones)."""
    torch.manual_seed(0)
    model = create("resnet20", shortcut=shortcut, width=10)  # widths 10/20/40: not /4 at all
    randomize_bn(model)
    exact = copy.deepcopy(model)
    key = f"target_{target}_reduction"
    r_exact = vacl.prune(exact, CIFAR, **{key: 0.5})
    report = vacl.prune(model, CIFAR, **{key: 0.5}, round_to=4)
    assert report["round_to"] == 4 and report["target_reached"]
    assert report[f"{target}_reduction"] >= 0.5
    before, after = report["widths_before"], report["widths_after"]
    assert any(after[n] != before[n] for n in after)
    for name, w in after.items():
        assert w % 4 == 0 or w == before[name], (name, w)
    assert sum(w % 4 != 0 for w in r_exact["widths_after"].values()) > 0  # it did something
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, *CIFAR))).all()


@pytest.mark.parametrize("cost, targets, binding", [
    ("none", {"params": 0.5, "macs": 0.6}, "macs"),
    ("params", {"params": 0.6, "macs": 0.5}, "params")])
@pytest.mark.parametrize("round_to", [None, 4])
def test_params_and_macs_targets_together_stop_when_both_are_reached(cost, targets, binding,
                                                                     round_to):
    """Both targets: the walk down the ranking stops where the later of the two single
    targets stops, so exactly the larger single selection is removed (without rounding), and
    both reductions are reached; the report names both."""
    torch.manual_seed(0)
    model = create("resnet20", shortcut="A", width=10)
    randomize_bn(model)
    kw = {"cost": cost, "round_to": round_to}
    alone = {k: vacl.prune(copy.deepcopy(model), CIFAR, **{f"target_{k}_reduction": r}, **kw)
             for k, r in targets.items()}
    # the single targets stop at different places, the binding one later: alone, the other
    # one falls short of the binding target, so the pair must go further than it
    other = next(k for k in targets if k != binding)
    assert alone[binding]["groups_removed"] > alone[other]["groups_removed"]
    assert alone[other][f"{binding}_reduction"] < targets[binding]
    report = vacl.prune(model, CIFAR, **{f"target_{k}_reduction": r for k, r in targets.items()},
                        **kw)
    assert report["mode"] == "params+macs" and report["target_reduction"] is None
    assert report["targets"] == targets and report["target_reached"]
    assert all(report[f"{k}_reduction"] >= r for k, r in targets.items())
    assert report["params_after"] == count_params(model)
    assert report["macs_after"] == count_macs(model, CIFAR)
    if round_to is None:
        assert report["removed_groups"] == alone[binding]["removed_groups"]
    else:
        for name, w in report["widths_after"].items():
            assert w % 4 == 0 or w == report["widths_before"][name], (name, w)
    with pytest.raises(UserError, match="or both target_params_reduction and "
                                        "target_macs_reduction"):
        vacl.prune(copy.deepcopy(model), CIFAR, target_params_reduction=0.5, threshold=0.1)


@pytest.mark.parametrize("round_to", [None, 4])
def test_max_layer_reduction_caps_every_layer_and_changes_the_allocation(round_to):
    """max_layer_reduction=0.6: every conv keeps ceil(0.4 * width) output channels; without
    the cap the same target takes some layer below that floor; the target is still reached
    (other groups go instead); values outside (0, 1] are refused by message."""
    torch.manual_seed(0)
    model = create("resnet20", shortcut="A", width=10)
    randomize_bn(model)
    block = model.layer1[0]
    with torch.no_grad():  # 9 of the 10 inner channels of one unit weakest: uncapped, they go
        for t in (block.conv1.weight, block.bn1.weight, block.bn1.bias):
            t[:9].mul_(0.01)
    free = vacl.prune(copy.deepcopy(model), CIFAR, target_params_reduction=0.6)
    floor = {n: math.ceil(0.4 * w) for n, w in free["widths_before"].items()}
    assert any(free["widths_after"][n] < floor[n] for n in floor)
    report = vacl.prune(model, CIFAR, target_params_reduction=0.6, max_layer_reduction=0.6,
                        round_to=round_to)
    assert report["target_reached"] and report["params_reduction"] >= 0.6
    assert report["max_layer_reduction"] == 0.6
    for name, w in report["widths_after"].items():
        assert w >= floor[name], (name, w, floor[name])
    for m in model.modules():  # the model itself, not just the report
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_features >= 4
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(UserError, match="max_layer_reduction must be a fraction in"):
            vacl.prune(copy.deepcopy(model), CIFAR, target_params_reduction=0.5,
                       max_layer_reduction=bad)


@pytest.mark.parametrize("how", [{"target_params_reduction": 0.99},
                                 {"target_macs_reduction": 0.99}, {"threshold": 1e9}])
@pytest.mark.parametrize("arch", ["A", "resnext"])
def test_pruning_never_empties_a_layer(how, arch, tmp_path):
    model = create("resnet8", shortcut="A", width=4) if arch == "A" else tiny_resnext()
    report = vacl.prune(model, CIFAR, **how)
    assert report["groups_removed"] > 0 and report["units_skipped_to_keep_layers"] > 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= m.groups and m.in_channels >= m.groups
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_features >= 1
    resprune.save(model, tmp_path / "run")
    with torch.no_grad():
        assert torch.isfinite(resprune.load(tmp_path / "run")(torch.randn(1, *CIFAR))).all()


def test_resnext_keeps_equal_cardinal_groups(tmp_path):
    torch.manual_seed(0)
    model = tiny_resnext()
    randomize_bn(model)
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    report = vacl.prune(model, CIFAR, target_params_reduction=0.5)
    assert report["params_reduction"] >= 0.5
    changed = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.out_channels % m.groups == 0 and m.in_channels % m.groups == 0
            assert m.weight.shape == (m.out_channels, m.in_channels // m.groups, 3, 3)
            changed += m.out_channels != before[name]
            kept = report["kept_out_channels"][name]
            half = before[name] // 2
            assert sum(c < half for c in kept) == sum(c >= half for c in kept)
    assert changed > 0
    resprune.save(model, tmp_path / "run")
    assert spec_of(resprune.load(tmp_path / "run")) == spec_of(model)


def test_option_a_index_maps_after_pruning():
    model = create("resnet20", shortcut="A", width=4)  # streams of 4, 8, 16 channels
    randomize_bn(model)
    gs = vacl.discover_groups(model, CIFAR)
    picks = [vacl.Member("conv1", OUT, 1),            # stage-1 channel: all three stages
             vacl.Member("layer2.0.conv2", OUT, 0),   # zero-padded stage-2 channel
             vacl.Member("layer2.0.conv2", OUT, 5),   # stage-2 channel fed by stage 1
             vacl.Member("layer3.0.conv2", OUT, 15)]  # zero-padded stage-3 channel
    chosen = [next(g for g in gs if p in g.members) for p in picks]
    original = copy.deepcopy(model)
    before, after, report = _zero_and_prune(model, CIFAR, chosen, gs)
    assert torch.allclose(before, after, atol=1e-5)
    kept = report["kept_out_channels"]
    for pad, src, dst in [("layer2.0.downsample", "layer1.2.conv2", "layer2.0.conv2"),
                          ("layer3.0.downsample", "layer2.2.conv2", "layer3.0.conv2")]:
        p0, p1 = original.get_submodule(pad), model.get_submodule(pad)
        assert isinstance(p1, PadShortcut)
        keep_in, keep_out = kept[src], kept[dst]
        assert p1.in_channels == len(keep_in) < p0.in_channels
        assert p1.out_channels == len(keep_out) < p0.out_channels
        x = torch.randn(2, p0.in_channels, 8, 8)
        assert torch.equal(p1(x[:, keep_in]), p0(x)[:, keep_out])
        expected = [keep_in.index(p0.index[k]) if p0.index[k] >= 0 else -1 for k in keep_out]
        assert p1.index == expected
        assert spec_of(model)["stages"][int(pad[5]) - 1][0]["shortcut"] == {"pad": expected}


class UserNet(nn.Module):
    """A hand-written residual net (no resprune modules): stem, 2 residual blocks, head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6),
                                  nn.ReLU())
        self.a1, self.an1 = nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.a2, self.an2 = nn.Conv2d(5, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.b1, self.act = nn.Conv2d(6, 4, 1), nn.PReLU(4)  # PReLU: not prunable here
        self.b2 = nn.Conv2d(4, 6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.an2(self.a2(torch.relu(self.an1(self.a1(x))))))
        x = torch.relu(x + self.b2(self.act(self.b1(x))))
        return self.head(x.mean((2, 3)))


def test_user_model_groups_regularizer_and_exact_pruning():
    model = UserNet().eval()
    randomize_bn(model)
    with pytest.raises(UserError, match="pass input_shape"):
        vacl.Regularizer(model)
    gs = vacl.discover_groups(model, (3, 16, 16))
    assert gs.counts() == {CROSS: 6, FILTER: 5}
    assert ("b1[0]", "touches unsupported layer act") in gs.skipped
    stream = next(g for g in gs if vacl.Member("stem.0", OUT, 2) in g.members)
    assert {m for m in stream.members if m.role in (OUT, BN)} == {
        vacl.Member("stem.0", OUT, 2), vacl.Member("stem.1", BN, 2),
        vacl.Member("a2", OUT, 2), vacl.Member("an2", BN, 2), vacl.Member("b2", OUT, 2)}
    reg = vacl.Regularizer(model, input_shape=(3, 16, 16), groups=gs)
    reg(model).backward()
    assert model.b2.bias.grad is not None and model.b1.weight.grad is None
    chosen = [stream, next(g for g in gs if vacl.Member("a1", OUT, 1) in g.members)]
    before, after, report = _zero_and_prune(model, (3, 16, 16), chosen, gs)
    assert report["groups_removed"] == 2 and model.head.in_features == 5
    assert model.a1.out_channels == 4 and model.b1.in_channels == 5
    assert torch.allclose(before, after, rtol=0, atol=1e-5)


# -- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"lam": -1.0}, r"lambda \(lam\) must be a finite number >= 0, got -1.0"),
    ({"beta": -0.5}, r"beta must be a finite number >= 0, got -0.5"),
    ({"lam": float("nan")}, "lambda"),
    ({"form": "cubic"}, r"unknown VACL regularizer form 'cubic'; choose one of: moments, "
                        r"additive, mean_std"),
    ({"input_shape": [3, 0, 32]}, "input_shape must list positive integers"),
])
def test_bad_regularizer_options(kwargs, match):
    with pytest.raises(UserError, match=match):
        vacl.Regularizer(create("resnet8", width=4), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"target_params_reduction": 1.0}, r"target_params_reduction must be in \[0, 1\)"),
    ({"target_macs_reduction": -0.1}, r"target_macs_reduction must be in \[0, 1\)"),
    ({"threshold": -1}, "threshold must be >= 0"),
    ({}, "give exactly one of threshold, target_params_reduction and target_macs_reduction"),
    ({"threshold": 0.1, "target_params_reduction": 0.5}, "got threshold, target_params"),
    ({"target_params_reduction": "half"}, "must be a number"),
])
def test_bad_prune_options(kwargs, match):
    model = create("resnet8", width=4)
    with pytest.raises(UserError, match=match):
        vacl.prune(model, CIFAR, **kwargs)


def test_groups_of_another_model_are_rejected():
    gs = vacl.discover_groups(create("resnet8", width=8), CIFAR)
    with pytest.raises(UserError, match="found on a different model"):
        vacl.prune(create("resnet8", width=4), CIFAR, threshold=0.1, groups=gs)
    with pytest.raises(UserError, match=r"has no layer 'layer1\.1\.bn1'.*different model"):
        vacl.Regularizer(create("resnet8", width=8), groups=vacl.discover_groups(
            create("resnet20", width=4), CIFAR))


def test_zero_reduction_removes_nothing():
    model = create("resnet8", width=4)
    spec = spec_of(model)
    report = vacl.prune(model, CIFAR, target_params_reduction=0.0)
    assert report["groups_removed"] == 0 and spec_of(model) == spec


def test_regularizer_on_selected_groups_only():
    from resprune.models import create
    from resprune.vacl import Regularizer

    torch.manual_seed(0)
    model = create("resnet8", num_classes=4, width=4)
    reg = Regularizer(model, lam=0.5, input_shape=(3, 8, 8))
    names = [g.name for g in reg.groups]
    chosen = names[::3]
    sel = Regularizer(model, lam=0.5, input_shape=(3, 8, 8), groups=reg.groups, only=chosen)
    per = reg.per_group(model).detach()
    idx = [names.index(n) for n in chosen]
    assert torch.allclose(sel(model), 0.5 * per[idx].sum())
    assert torch.allclose(reg(model), 0.5 * per.sum())
    sel.select(None)
    assert torch.allclose(sel(model), reg(model))
    with pytest.raises(UserError, match="unknown channel group"):
        sel.select(["no-such-group"])


@pytest.mark.parametrize("arch", ["A", "resnext"])
def test_params_and_macs_costs_are_what_removing_each_unit_saves(arch):
    """A unit's params / MACs cost equals the counted drop when that unit alone is removed
    (checked on a residual-stream group, the first inner group, and a ResNeXt bundle)."""
    from resprune.measure import count_macs, count_params
    from resprune.vacl.groups import discover_groups
    from resprune.vacl.latency_fit import pruned_copy
    from resprune.vacl.ranking import SizeModel, removal_units, unit_savings

    torch.manual_seed(0)
    model = create("resnet8", shortcut="A", width=4) if arch == "A" else tiny_resnext()
    groups = discover_groups(model, CIFAR)
    units, _ = removal_units(model, groups, torch.arange(len(groups), dtype=torch.float64))
    params0, macs0 = count_params(model), count_macs(model, CIFAR)
    sizes = SizeModel(model, CIFAR, params0, macs0)
    costs = {c: unit_savings(sizes, groups, units, c) for c in ("params", "macs")}
    kinds = set()
    for i, u in enumerate(units):
        kind = (groups[u.groups[0]].kind, len(u.groups))
        if kind in kinds:
            continue
        kinds.add(kind)
        alone = pruned_copy(model, [m for gi in u.groups for m in groups[gi].members])
        assert costs["params"][i] == params0 - count_params(alone), kind
        assert costs["macs"][i] == macs0 - count_macs(alone, CIFAR), kind
    assert len(kinds) >= 2


@pytest.mark.parametrize("cost", ["params", "macs"])
def test_params_or_macs_cost_removes_what_saves_most_at_equal_score(cost):
    """Nearly equal scores (later groups a hair lower): cost=none removes the last groups
    first; cost=params/macs removes the units that save the most, and any cost refuses a
    threshold."""
    from resprune.measure import count_macs, count_params
    from resprune.vacl.groups import discover_groups
    from resprune.vacl.ranking import SizeModel, removal_units, unit_savings

    model = create("resnet20", shortcut="A", width=8)
    groups = discover_groups(model, CIFAR)
    flat = 1 + 1e-9 * torch.arange(len(groups), 0, -1, dtype=torch.float64)
    units, _ = removal_units(model, groups, flat)
    saves = unit_savings(SizeModel(model, CIFAR, count_params(model), count_macs(model, CIFAR)),
                       groups, units, cost)
    by_name = {groups[u.groups[0]].name: c for u, c in zip(units, saves)}
    plain = vacl.prune(copy.deepcopy(model), CIFAR, target_macs_reduction=0.3, scores=flat)
    aware = vacl.prune(copy.deepcopy(model), CIFAR, target_macs_reduction=0.3, scores=flat,
                       cost=cost)
    assert aware["cost"] == cost and aware["target_reached"]
    assert all(n.startswith("layer3.") for n in plain["removed_groups"])
    assert any(n.startswith("conv1[") for n in aware["removed_groups"])  # stage-1 stream
    assert min(by_name[n] for n in aware["removed_groups"]) >= max(
        by_name[n] for n in by_name if n not in aware["removed_groups"])
    with pytest.raises(UserError, match=f"cost='{cost}' ranks for a params, MACs or latency"):
        vacl.prune(copy.deepcopy(model), CIFAR, threshold=0.1, cost=cost)
