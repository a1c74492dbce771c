"""Importing the checkpoints users already have (resprune import / resprune.from_state_dict).

Generated torchvision-named checkpoints (the ResNet-50 names of the torchvision key fixture)
are written in every wrapper and prefix users meet; bad files are refused with one line and
exit status 2. The published akamaster CIFAR ResNets in ../shared are checked on real images
(skipped when ../shared is absent).
"""

from __future__ import annotations

import io
import json
import math
import pickle
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

import resprune
from resprune import UserError
from resprune.cli.main import main
from resprune.data import load_dataset, make_loader
from resprune.measure import evaluate

FIXTURE = Path(__file__).parent / "fixtures" / "torchvision_keys.json"
SHARED = Path(__file__).resolve().parents[2] / "shared"
AKAMASTER = SHARED / "pretrained" / "akamaster-cifar10"
MINI = SHARED / "datasets" / "cifar10-mini"
JPEG = SHARED / "datasets" / "cifar10-jpeg"


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _tv_state(arch: str = "resnet50", seed: int = 0) -> dict[str, torch.Tensor]:
    shapes = json.loads(FIXTURE.read_text(encoding="utf-8"))[arch]
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 1:
            state[k] = torch.randn(shape, generator=g) * 0.1
        else:
            state[k] = torch.randn(shape, generator=g) * math.sqrt(2 / math.prod(shape[1:]))
    return state


@pytest.fixture(scope="module")
def tv_state():
    return _tv_state()


# -- torchvision-named checkpoints in every wrapper ----------------------------------------

WRAPPERS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 90, "best_acc1": 76.1},
    "model": lambda s: {"model": s, "optimizer": {"lr": 0.1}},
    "model_state_dict": lambda s: {"model_state_dict": s, "epoch": 3},
    "ddp": lambda s: {f"module.{k}": v for k, v in s.items()},
    "compile": lambda s: {f"_orig_mod.{k}": v for k, v in s.items()},
    "ddp_compile_wrapped": lambda s: {"state_dict": {f"module._orig_mod.{k}": v
                                                     for k, v in s.items()}},
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_torchvision_checkpoint_in_every_wrapper(tmp_path, tv_state, wrapper):
    path = tmp_path / "ckpt.pth"
    torch.save(WRAPPERS[wrapper](tv_state), path)
    r = resprune.importing.import_checkpoint(path, "resnet50")
    got = r.model.state_dict()
    assert set(got) == set(tv_state)
    assert all(torch.equal(got[k], v) for k, v in tv_state.items())
    assert r.preset == "torchvision"
    assert r.model.preprocess == {"input_size": 224, "mean": [0.485, 0.456, 0.406],
                                  "std": [0.229, 0.224, 0.225], "resize": 256}
    if wrapper in ("state_dict", "model_state_dict"):
        assert r.source["metadata"]["epoch"] in (90, 3)


def test_safetensors_checkpoint_and_api(tmp_path, tv_state):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(tv_state, str(path), metadata={"source": "test"})
    model = resprune.from_state_dict(path, model="resnet50")
    x = torch.randn(1, 3, 64, 64)
    ref = resprune.models.create("resnet50", num_classes=1000)
    ref.load_state_dict(tv_state)
    model.eval(), ref.eval()
    assert torch.equal(model(x), ref(x))  # the same weights, the same logits
    r = resprune.importing.import_checkpoint(path, "resnet50")
    assert r.source["file_metadata"] == {"source": "test"}
    assert r.source["sha256"] == resprune.importing.files.sha256_of(path)


def test_num_classes_and_preprocess_overrides(tv_state):
    state = dict(tv_state)
    state["fc.weight"], state["fc.bias"] = torch.zeros(5, 2048), torch.zeros(5)
    r = resprune.importing.import_checkpoint(state, "resnet50",
                                             preprocess={"input_size": 160})
    assert r.model.fc.out_features == 5  # from the checkpoint's classifier
    assert r.model.preprocess["input_size"] == 160 and r.model.preprocess["resize"] == 183
    with pytest.raises(UserError, match=r"classifier has 5 classes .*pass --num-classes 5"):
        resprune.importing.import_checkpoint(state, "resnet50", num_classes=10)


def test_key_map_and_plain_preset():
    net = resprune.create("resnet8", num_classes=4)
    state = {("head." + k[3:] if k.startswith("fc.") else k): v
             for k, v in net.state_dict().items()}
    with pytest.raises(UserError, match=r"2 missing \(fc.weight, fc.bias\).*2 unexpected"):
        resprune.importing.import_checkpoint(state, "resnet8", num_classes=4)
    r = resprune.importing.import_checkpoint(state, "resnet8", key_map=["head.=fc."])
    assert r.preset == "plain" and r.model.preprocess is None
    assert all(torch.equal(r.model.state_dict()[k], v) for k, v in net.state_dict().items())
    with pytest.raises(UserError, match="must look like OLD=NEW"):
        resprune.importing.import_checkpoint(state, "resnet8", key_map=["head."])


# -- bad files ---------------------------------------------------------------------------------

class _Boom:
    def __reduce__(self):
        return (print, ("PWNED",))


def test_bad_files_give_one_line(tmp_path, tv_state, capsys):
    out = tmp_path / "run"
    good = tmp_path / "good.pth"
    torch.save(tv_state, good)
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    crafted = tmp_path / "evil.pth"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # a torch.save-style zip whose pickle calls print
        z.writestr("evil/data.pkl", pickle.dumps({"a": _Boom()}, protocol=2))
        z.writestr("evil/version", "3\n")
    crafted.write_bytes(buf.getvalue())
    crafted2 = tmp_path / "evil2.pth"
    torch.save({"state_dict": tv_state, "x": _Boom()}, crafted2)
    text = tmp_path / "notes.pth"
    text.write_text("just some text\n")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    cases = [
        (truncated, ["--model", "resnet50"], "truncated, corrupt"),
        (crafted, ["--model", "resnet50"], "needs pickled code"),
        (crafted2, ["--model", "resnet50"], "needs pickled code"),
        (text, ["--model", "resnet50"], "not a readable PyTorch checkpoint"),
        (tensor, ["--model", "resnet50"], "holds a Tensor, not a state_dict"),
        (good, ["--model", "resnet18"], "does not fit --model resnet18"),
        (good, ["--model", "resnet50", "--num-classes", "10"], "pass --num-classes 1000"),
        (tmp_path / "missing.pth", ["--model", "resnet50"], "does not exist"),
    ]
    for path, extra, msg in cases:
        code, stdout, err = run_cli(["import", path, *extra, "--out", out], capsys)
        assert code == 2, (path, err)
        assert err.startswith("resprune: error: ") and err.count("\n") == 1, err
        assert msg in err, (msg, err)
        assert "PWNED" not in stdout + err
        assert not out.exists()  # nothing written on bad input


def test_cli_import_writes_a_run(tmp_path, capsys):
    net = resprune.create("resnet8", num_classes=3)
    path = tmp_path / "mine.pt"
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    out = tmp_path / "run"
    code, stdout, err = run_cli(["import", path, "--model", "resnet8", "--mean", "0.5",
                                 "--std", "0.25", "--json", "--out", out], capsys)
    assert code == 0, err
    s = json.loads(stdout)
    assert s["kind"] == "import" and s["params"] == sum(p.numel() for p in net.parameters())
    assert s["depth"] == 8 and s["source"]["file"] == "mine.pt" and s["preset"] == "plain"
    arch = json.loads((out / "arch.json").read_text())
    assert arch["preprocess"] == {"input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                                  "resize": None}
    loaded = resprune.load(out)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    code, _, err = run_cli(["import", path, "--model", "resnet8", "--out", out], capsys)
    assert code == 2 and "not empty" in err


# -- the published akamaster models on real images ----------------------------------------------

def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not present (only beside the dev checkout)")
    return path


@pytest.mark.parametrize("name,arch,floor", [("resnet20-12fca82f.th", "resnet20", 0.91),
                                             ("resnet56-4bfd9763.th", "resnet56", 0.925)])
def test_akamaster_on_lossless_test_batch(name, arch, floor):
    model = resprune.from_state_dict(_need(AKAMASTER / name), model=arch)
    bundle = load_dataset("cifar10", _need(MINI), preprocess=model.preprocess)
    assert bundle.mean == (0.485, 0.456, 0.406)  # ImageNet statistics, as akamaster trained
    r = evaluate(model, make_loader(bundle, "test", 512, train=False))
    assert r["n"] == 1017 and r["top1"] >= floor, r


def test_akamaster_resnet56_on_jpeg_test_folder():
    model = resprune.from_state_dict(_need(AKAMASTER / "resnet56-4bfd9763.th"),
                                     model="resnet56")
    bundle = load_dataset("imagefolder", _need(JPEG), preprocess=model.preprocess,
                          progress=False)
    assert bundle.in_memory and bundle.image_size == 32 and len(bundle.test) == 5000
    batches = list(make_loader(bundle, "test", 500, train=False))
    assert bundle.train.pending is not None  # reading the test split decoded only test/
    x, y = (torch.cat(t)[::5] for t in zip(*batches))  # every 5th image: 100 per class
    assert torch.bincount(y).tolist() == [100] * 10
    r = evaluate(model, [(x[i:i + 250], y[i:i + 250]) for i in range(0, 1000, 250)])
    assert r["top1"] > 0.78, r  # 83.02 % on all 5,000 (benchmarks/results); SE 1.2 points


def test_import_then_compress_smoke(tmp_path, capsys):
    """import -> compress on a few hundred real JPEGs, one short epoch per stage."""
    src = _need(JPEG)
    folder = tmp_path / "jpeg"
    for split, n in (("train", 24), ("test", 6)):
        for cls in sorted(p.name for p in (src / split).iterdir()):
            (folder / split / cls).mkdir(parents=True)
            for f in sorted((src / split / cls).iterdir())[:n]:
                (folder / split / cls / f.name).symlink_to(f)
    imported, out = tmp_path / "imported", tmp_path / "small"
    code, _, err = run_cli(["import", _need(AKAMASTER / "resnet20-12fca82f.th"), "--model",
                            "resnet20", "--data", "imagefolder", "--data-dir", folder,
                            "--no-progress", "--out", imported], capsys)
    assert code == 0, err
    code, stdout, err = run_cli([
        "compress", imported, "--target-params-reduction", "0.5", "--per-step", "1",
        "--max-steps", "1", "--adapt-epochs", "1", "--retrain-epochs", "1", "--sparse-epochs",
        "1", "--finetune-epochs", "1", "--finetune-final-epochs", "1", "--epoch-size", "64",
        "--batch-size", "32", "--distill-from", "input", "--distill-attention", "100",
        "--lam-schedule", "raise", "--no-progress", "--json", "--out", out], capsys)
    assert code == 0, err
    s = json.loads(stdout)
    assert s["params_removed_pct"] >= 50.0 and s["data"]["name"] == "imagefolder"
    assert s["data"]["train"] == 216 and s["data"]["test"] == 60
    # the preprocessing of the imported model travelled to the compressed one
    assert json.loads((out / "arch.json").read_text())["preprocess"]["mean"] == [0.485, 0.456,
                                                                                 0.406]
    ft = [json.loads(line) for line in
          (out / "stages" / "3-finetune" / "metrics.jsonl").read_text().splitlines()]
    assert ft and all(r["teacher_seconds"] > 0 for r in ft)  # distilled from the input
    options = json.loads((out / "command.json").read_text())["options"]
    assert options["distill_attention"] == 100.0  # with attention transfer, through every stage


def test_export_preprocess_bakes_normalisation(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from resprune.export._onnx import onnx_runner

    net = resprune.create("resnet8", num_classes=3).eval()
    run = tmp_path / "run"
    resprune.save(net, run)
    code, _, err = run_cli(["export", run, "--preprocess", "--out", tmp_path / "a.onnx"], capsys)
    assert code == 2 and "records no preprocessing" in err  # an old run: nothing to bake in
    net.preprocess = {"input_size": 20, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3],
                      "resize": None}
    resprune.save(net, run)
    code, out, err = run_cli(["export", run, "--preprocess", "--json", "--out",
                              tmp_path / "m.onnx"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["input_shape"] == [3, 20, 20] and info["preprocess"]["mean"] == [0.4, 0.5, 0.6]
    x = torch.rand(2, 3, 20, 20)  # images in [0, 1]
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    got = onnx_runner((tmp_path / "m.onnx").read_bytes())(x)
    assert torch.allclose(got, net((x - mean) / std), atol=1e-4)
