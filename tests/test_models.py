import json

import pytest
import torch

from resprune import UserError
from resprune.models import PadShortcut, build, create, list_models, spec_of, validate_spec


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,opts,expected", [
    ("resnet20", {}, 269_722),
    ("resnet56", {"shortcut": "A"}, 853_018),
    ("resnet56", {"shortcut": "B"}, 855_770),
    ("resnet110", {}, 1_727_962),
    ("resnext29", {}, 34_426_698),
    ("resnet18", {"num_classes": 1000}, 11_689_512),
    ("resnet50", {"num_classes": 1000}, 25_557_032),
    ("resnext50_32x4d", {"num_classes": 1000}, 25_028_904),
])
def test_param_counts(name, opts, expected):
    assert n_params(create(name, **opts)) == expected


def test_resnet56_param_arithmetic():
    # stem 3*16*9 + BN, 9 blocks per stage of two 3x3 convs + 2 BNs, fc 64*10+10
    def stage(cin, c, n):
        return (cin * c * 9 + c * c * 9 + 4 * c) + (n - 1) * (2 * c * c * 9 + 4 * c)
    total = 3 * 16 * 9 + 32 + stage(16, 16, 9) + stage(16, 32, 9) + stage(32, 64, 9) + 650
    assert n_params(create("resnet56")) == total


def test_registry_and_unknown_model():
    assert {"resnet20", "resnet56", "resnet110", "resnext29", "resnet50"} <= set(list_models())
    with pytest.raises(UserError, match="unknown model 'resnet57'.*resnet56"):
        create("resnet57")
    with pytest.raises(UserError, match="shortcut must be 'A' or 'B'"):
        create("resnet20", shortcut="C")


def test_spec_roundtrip_is_json_and_rebuilds_same_shapes():
    for name, kw in [("resnet20", {}), ("resnet20", {"shortcut": "B"}),
                     ("resnext29", {"cardinality": 2, "base_width": 4, "width": 8}),
                     ("resnet18", {"num_classes": 5})]:
        m = create(name, **kw)
        spec = json.loads(json.dumps(spec_of(m)))
        m2 = build(spec)
        assert spec_of(m2) == spec
        assert {k: v.shape for k, v in m.state_dict().items()} == \
            {k: v.shape for k, v in m2.state_dict().items()}


def test_pad_shortcut_equals_zero_padding():
    m = PadShortcut(4, PadShortcut.default_index(4, 8), stride=2)
    x = torch.randn(2, 4, 6, 6)
    ref = torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
    assert torch.equal(m(x), ref)
    assert m.index == [-1, -1, 0, 1, 2, 3, -1, -1]


def test_reduced_spec_builds_and_runs():
    spec = spec_of(create("resnet20"))
    # drop channels in stage 2 and make the pad map arbitrary; erase one unit of stage 3
    for u in spec["stages"][0]:
        u["widths"] = [8]
    st2 = spec["stages"][1]
    st2[0]["shortcut"] = {"pad": [3, -1, 0, 5, -1, 15] + [-1] * 18}
    for u in st2:
        u["out"] = 24
        u["widths"] = [12]
    for u in st2[1:]:
        u["in"] = 24
    spec["stages"][2][0]["in"] = 24
    spec["stages"][2][0]["shortcut"] = {"pad": PadShortcut.default_index(24, 64)}
    spec["stages"][2][2] = {"erased": True, "in": 64, "out": 64}
    m = build(spec).eval()
    assert spec_of(m) == validate_spec(spec)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(m.layer3[2], torch.nn.Identity)
    assert n_params(m) < n_params(create("resnet20"))


@pytest.mark.parametrize("mutate,msg", [
    (lambda s: s.update(format=9), "unsupported format"),
    (lambda s: s.pop("stages"), "missing key 'stages'"),
    (lambda s: s["stages"][1][1].update({"in": 7}), r"layer2.1.in is 7"),
    (lambda s: s["stages"][0][0].update({"shortcut": "magic"}), "shortcut must be"),
    (lambda s: s["stages"][1][0]["shortcut"].update({"pad": [99] * 32}), "pad index"),
    (lambda s: s.update(num_classes=0), "num_classes must be an integer >= 1"),
])
def test_invalid_spec_messages(mutate, msg):
    spec = spec_of(create("resnet20"))
    mutate(spec)
    with pytest.raises(UserError, match=msg):
        build(spec)


def test_gates_at_one_are_exact():
    torch.manual_seed(0)
    plain = create("resnet20").eval()
    gated = create("resnet20", gates=True).eval()
    missing, unexpected = gated.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all(k.endswith("gate") for k in missing) and len(missing) == 7
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(plain(x), gated(x))


def test_spec_of_rejects_foreign_models():
    with pytest.raises(UserError, match="not a resprune model"):
        spec_of(torch.nn.Linear(2, 2))
