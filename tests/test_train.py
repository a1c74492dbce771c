"""The trainer: config validation, LR schedule, run-directory files, exact resume, NaN guard,
hook points and pickle safety. Tiny model + synthetic data: the whole file runs in seconds."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
from torch import nn

import resprune
from resprune import UserError, create
from resprune.data import load_dataset, make_loader
from resprune.train import Callback, LRSchedule, TrainConfig, Trainer, lr_factor

KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_acc", "images_per_s", "seconds"}
TIMING = ("images_per_s", "seconds")


def loaders(batch_size: int = 16, seed: int = 0):
    bundle = load_dataset("synthetic", val_fraction=0.25, seed=0, num_classes=4, channels=3,
                          image_size=8, train_size=64, test_size=16, augment=True)
    train = make_loader(bundle, "train", batch_size, train=True, seed=seed)
    val = make_loader(bundle, "val", 32, train=False)
    return train, val


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create("resnet8", num_classes=4, width=4)


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=16, lr=0.05, warmup_epochs=0.5, device="cpu", seed=3)
    return TrainConfig(**{**base, **kw})


def states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def no_timing(history):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


# -- schedule -----------------------------------------------------------------------------
def test_cosine_schedule_values():
    assert lr_factor(0, 100, "cosine") == 1.0
    assert lr_factor(25, 100, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))


def test_multistep_and_constant_schedule_values():
    f = [lr_factor(s, 100, "multistep", milestones=(0.5, 0.75), gamma=0.1)
         for s in (0, 49, 50, 74, 75, 99)]
    assert f == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert {lr_factor(s, 100, "constant") for s in range(100)} == {1.0}


def test_warmup_is_linear_per_step_then_cosine_from_one():
    w = [lr_factor(s, 110, "cosine", warmup_steps=10) for s in range(12)]
    assert w[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert w[10] == 1.0  # cosine starts after warm-up
    assert w[11] == pytest.approx(0.5 * (1 + math.cos(math.pi / 100)))
    # warm-up multiplies a multistep schedule too
    assert lr_factor(4, 100, "multistep", warmup_steps=10) == pytest.approx(0.5)


def test_lr_schedule_from_config_and_as_lambdalr():
    c = TrainConfig(epochs=4, lr=0.2, schedule="multistep", milestones=(0.5,), gamma=0.5,
                    warmup_epochs=1, device="cpu")
    s = LRSchedule(c, steps_per_epoch=5)
    assert (s.total_steps, s.warmup_steps) == (20, 5)
    assert [s.lr(i) for i in (0, 4, 9, 10, 19)] == pytest.approx([0.04, 0.2, 0.2, 0.1, 0.1])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=s)
    seen = []
    for _ in range(11):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([s.lr(i) for i in range(11)])


# -- config -------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, msg", [
    (dict(epochs=-1), "training option epochs must be an integer >= 0, got -1"),
    (dict(epochs=2.5), "epochs must be an integer >= 0, got 2.5"),
    (dict(lr=0), "training option lr must be a number > 0, got 0"),
    (dict(lr=-0.1), "lr must be a number > 0, got -0.1"),
    (dict(lr=float("nan")), "lr must be a number > 0, got nan"),
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(momentum=1.0), "momentum must be a number >= 0 and < 1, got 1.0"),
    (dict(momentum=0.0), "Nesterov momentum needs momentum > 0"),
    (dict(weight_decay=-1e-4), "weight_decay must be a number >= 0, got -0.0001"),
    (dict(schedule="step"), "unknown schedule 'step'; choose one of: cosine, multistep, "
                            "constant"),
    (dict(milestones=(0.75, 0.5)), "milestones must be increasing numbers in (0, 1]"),
    (dict(milestones=(0.5, 1.5)), "milestones must be increasing numbers in (0, 1]"),
    (dict(gamma=0), "gamma must be a number > 0, got 0"),
    (dict(warmup_epochs=-1), "warmup_epochs must be a number >= 0, got -1"),
    (dict(warmup_epochs=3), "warmup_epochs=3 cannot exceed the number of epochs (2)"),
    (dict(label_smoothing=1.0), "label_smoothing must be a number >= 0 and < 1, got 1.0"),
    (dict(mixup=-1.0), "mixup must be a number >= 0, got -1.0"),
    (dict(precision="fp16"), "unknown precision 'fp16'; choose one of: fp32, bf16"),
    (dict(device="tpu"), "unknown device 'tpu'; choose one of: auto, cpu, cuda"),
    (dict(seed=-3), "seed must be an integer >= 0, got -3"),
    (dict(nesterov="yes"), "nesterov must be true or false, got 'yes'"),
])
def test_config_validate_names_the_bad_value(kw, msg):
    with pytest.raises(UserError, match=re.escape(msg)):
        TrainConfig(**{"epochs": 2, **kw}).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_config_refuses_cuda_when_absent():
    with pytest.raises(UserError, match=r"device='cuda': no CUDA device is available"):
        TrainConfig(device="cuda").validate()


def test_config_dict_round_trip_and_unknown_keys():
    c = TrainConfig(epochs=7, schedule="multistep", milestones=(0.3, 0.6), precision="bf16")
    d = c.to_dict()
    assert d["milestones"] == [0.3, 0.6]
    assert json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict(d) == c
    with pytest.raises(UserError, match=r"unknown training option\(s\) 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(UserError, match=r"lr must be a number > 0, got 0"):
        TrainConfig.from_dict({"lr": 0})


# -- a run --------------------------------------------------------------------------------
def test_two_epochs_write_the_run_directory(tmp_path):
    train, val = loaders()
    model = tiny()
    tr = Trainer(model, train, val, cfg(), run_dir=tmp_path, progress=False)
    history = tr.fit()
    assert tr.model is model and tr.epoch == 2 and tr.global_step == 2 * len(train)
    assert tr.device == torch.device("cpu")
    for name in ("metrics.jsonl", "model.safetensors", "arch.json", "train_state.pt"):
        assert (tmp_path / name).is_file(), name
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2 and records == history == tr.history
    for e, r in enumerate(records, 1):
        assert KEYS <= r.keys()
        assert r["epoch"] == e
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1
        assert r["images_per_s"] > 0 and r["seconds"] > 0 and r["train_loss"] > 0
    # lr of the last step of each epoch, from the pure schedule
    assert records[1]["lr"] == pytest.approx(tr.schedule.lr(tr.global_step - 1))
    # the saved model is the trained model, and the val accuracy is measured on it
    loaded = resprune.load(tmp_path)
    states_equal(loaded.state_dict(), model.state_dict())
    ev = resprune.measure.evaluate(loaded, val)
    assert ev["top1"] == records[1]["val_acc"]


def test_no_val_loader_gives_null_val_acc_and_no_run_dir_writes_nothing(tmp_path):
    train, _ = loaders()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        h = Trainer(tiny(), train, None, cfg(epochs=1), progress=False).fit()
    finally:
        os.chdir(cwd)
    assert h[0]["val_acc"] is None
    assert list(tmp_path.iterdir()) == []


def test_training_learns_the_synthetic_task():
    train, val = loaders()
    h = Trainer(tiny(), train, val, cfg(epochs=6, lr=0.1), progress=False).fit()
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["val_acc"] >= 0.5  # 4 classes: chance is 0.25


def test_same_seed_same_result_on_cpu():
    a, b = tiny(), tiny()
    Trainer(a, loaders()[0], None, cfg(), progress=False).fit()
    Trainer(b, loaders()[0], None, cfg(), progress=False).fit()
    states_equal(a.state_dict(), b.state_dict())


class Kill(Callback):
    """Simulate a kill in the middle of epoch ``epoch`` (after its checkpoint of epoch-1)."""

    def __init__(self, epoch: int, step: int = 2):
        self.epoch, self.step = epoch, step

    def after_step(self, trainer):
        if trainer.epoch == self.epoch and trainer.step_in_epoch == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("mixup", [0.0, 0.4])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, mixup):
    config = cfg(epochs=3, label_smoothing=0.1, mixup=mixup)
    full = tiny()
    t_full = Trainer(full, loaders()[0], loaders()[1], config, run_dir=tmp_path / "full",
                     progress=False)
    h_full = t_full.fit()
    rng_full = torch.get_rng_state()

    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny(), loaders()[0], loaders()[1], config, run_dir=tmp_path / "cut",
                callbacks=[Kill(epoch=2)], progress=False).fit()
    torch.manual_seed(1234)  # disturb the global RNG: resume must restore it
    resumed = tiny(seed=99)  # different initial weights: all must come from train_state.pt
    t_res = Trainer(resumed, loaders()[0], loaders()[1], config, run_dir=tmp_path / "cut",
                    progress=False)
    h_res = t_res.fit(resume=True)

    states_equal(full.state_dict(), resumed.state_dict())
    o_full, o_res = t_full.optimizer.state_dict(), t_res.optimizer.state_dict()
    assert o_full["param_groups"] == o_res["param_groups"]
    for i, st in o_full["state"].items():
        assert torch.equal(st["momentum_buffer"], o_res["state"][i]["momentum_buffer"])
    assert no_timing(h_full) == no_timing(h_res)
    assert t_res.global_step == t_full.global_step
    assert torch.equal(torch.get_rng_state(), rng_full)  # restored, not the disturbed one
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    states_equal(resprune.load(tmp_path / "cut").state_dict(), full.state_dict())


class Count(Callback):
    def __init__(self):
        self.calls = {"on_fit_start": 0, "after_step": 0, "on_epoch_end": 0}

    def on_fit_start(self, trainer):
        self.calls["on_fit_start"] += 1

    def after_step(self, trainer):
        self.calls["after_step"] += 1
        assert trainer.loss is not None and trainer.optimizer is not None

    def on_epoch_end(self, trainer, record):
        self.calls["on_epoch_end"] += 1
        record["gate_mean"] = torch.tensor(0.5)  # tensors become plain numbers


def test_resume_of_a_finished_run_does_not_train(tmp_path):
    train, val = loaders()
    first = tiny()
    h = Trainer(first, train, val, cfg(), run_dir=tmp_path, progress=False).fit()
    before = (tmp_path / "train_state.pt").read_bytes()
    calls = []
    again = tiny(seed=5)
    cb = Count()
    tr = Trainer(again, train, val, cfg(), run_dir=tmp_path, callbacks=[cb],
                 loss_terms=[lambda m: calls.append(1) or torch.zeros(())], progress=False)
    assert tr.fit(resume=True) == h
    assert calls == [] and cb.calls == {"on_fit_start": 0, "after_step": 0, "on_epoch_end": 0}
    states_equal(again.state_dict(), first.state_dict())
    assert (tmp_path / "train_state.pt").read_bytes() == before


def test_resume_refuses_other_settings_missing_state_and_other_models(tmp_path):
    train, val = loaders()
    Trainer(tiny(), train, val, cfg(epochs=1), run_dir=tmp_path / "r", progress=False).fit()
    with pytest.raises(UserError, match=r"started with other settings \(lr: 0.05 -> 0.1\)"):
        Trainer(tiny(), train, val, cfg(epochs=1, lr=0.1), run_dir=tmp_path / "r",
                progress=False).fit(resume=True)
    with pytest.raises(UserError, match=r"cannot resume: .*train_state.pt does not exist"):
        Trainer(tiny(), train, val, cfg(), run_dir=tmp_path / "none",
                progress=False).fit(resume=True)
    with pytest.raises(UserError, match="no run directory"):
        Trainer(tiny(), train, val, cfg(), progress=False).fit(resume=True)
    other = create("resnet8", num_classes=4, width=8)
    with pytest.raises(UserError, match="the model does not match"):
        Trainer(other, train, val, cfg(epochs=1), run_dir=tmp_path / "r",
                progress=False).fit(resume=True)


def test_train_state_is_loaded_only_through_safe_torch_load(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": 1, "epoch": Evil()}, tmp_path / "train_state.pt")
    train, val = loaders()
    with pytest.raises(UserError, match="refusing to load training state"):
        Trainer(tiny(), train, val, cfg(), run_dir=tmp_path, progress=False).fit(resume=True)
    assert not marker.exists()


def test_state_with_wrong_layout_is_refused(tmp_path):
    torch.save({"hello": torch.zeros(1)}, tmp_path / "train_state.pt")
    train, val = loaders()
    with pytest.raises(UserError, match="is not a resprune training state"):
        Trainer(tiny(), train, val, cfg(), run_dir=tmp_path, progress=False).fit(resume=True)


# -- NaN guard ----------------------------------------------------------------------------
NAN_MSG = (r"training loss became NaN at epoch {e}, step {s}; lower the learning rate \(--lr\) "
           r"or use --precision fp32")


def test_huge_lr_raises_nan_error(tmp_path):
    train, val = loaders()
    with pytest.raises(UserError, match=NAN_MSG.format(e=1, s=r"\d+")):
        Trainer(tiny(), train, val, cfg(lr=1e30, warmup_epochs=0, schedule="constant"),
                run_dir=tmp_path, progress=False).fit()
    assert not (tmp_path / "train_state.pt").exists()


def test_nan_loss_leaves_the_last_checkpoint_intact(tmp_path):
    names = ("train_state.pt", "model.safetensors", "arch.json", "metrics.jsonl")
    snapshot: dict[str, bytes] = {}

    class Snapshot(Callback):
        def after_step(self, trainer):
            if trainer.epoch == 2 and trainer.step_in_epoch == 1:
                snapshot.update({n: (tmp_path / n).read_bytes() for n in names})

    trainer: Trainer | None = None

    def poison(model):
        bad = trainer.epoch == 2 and trainer.step_in_epoch == 2
        return torch.tensor(float("nan") if bad else 0.0)

    train, val = loaders()
    trainer = Trainer(tiny(), train, val, cfg(), run_dir=tmp_path, callbacks=[Snapshot()],
                      loss_terms=[poison], progress=False)
    with pytest.raises(UserError, match=NAN_MSG.format(e=2, s=2)):
        trainer.fit()
    assert set(snapshot) == set(names)
    for n in names:
        assert (tmp_path / n).read_bytes() == snapshot[n], n
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


# -- hook points --------------------------------------------------------------------------
def test_loss_terms_and_callbacks_are_called(tmp_path):
    train, val = loaders()
    cb = Count()
    seen: list[nn.Module] = []

    def pull_bias_down(model):
        seen.append(model)
        return 10.0 * model.fc.bias.sum()

    model = tiny()
    tr = Trainer(model, train, val, cfg(), run_dir=tmp_path, callbacks=[cb],
                 loss_terms=[pull_bias_down], progress=False)
    h = tr.fit()
    steps = 2 * len(train)
    assert cb.calls == {"on_fit_start": 1, "after_step": steps, "on_epoch_end": 2}
    assert len(seen) == steps and all(m is model for m in seen)
    assert all(r["gate_mean"] == 0.5 and "extra_loss" in r for r in h)
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])[
        "gate_mean"] == 0.5
    # the term's gradient (10 per bias entry) dominates: every bias went down a lot
    plain = tiny()
    Trainer(plain, train, val, cfg(), progress=False).fit()
    assert (model.fc.bias < plain.fc.bias - 0.5).all()


def test_a_regularizer_term_adds_its_gradient_after_backward_with_the_same_result(tmp_path):
    """A VACL Regularizer among the loss terms is applied by ``add_grad_`` between backward and
    the optimizer step: the trained weights and the logged term are exactly those of the
    same term backpropagated as a plain loss term."""
    from resprune import vacl

    runs = {}
    for how in ("fused", "backpropagated"):
        model = tiny()
        reg = vacl.Regularizer(model, lam=0.05, input_shape=(3, 8, 8))
        term = reg if how == "fused" else (lambda m, reg=reg: reg(m))
        calls = []
        if how == "fused":  # count the fused calls (the loss terms are then empty)
            add = reg.add_grad_
            reg.add_grad_ = lambda m, add=add, calls=calls: calls.append(1) or add(m)
        train, val = loaders()
        tr = Trainer(model, train, val, cfg(), loss_terms=[term], progress=False)
        assert (tr.grad_terms, len(tr.loss_terms)) == (([reg], 0) if how == "fused"
                                                       else ([], 1))
        runs[how] = (tr.fit(), model.state_dict(), len(calls))
    (h_fused, w_fused, n), (h_ref, w_ref, _) = runs["fused"], runs["backpropagated"]
    assert n == 2 * len(loaders()[0])
    states_equal(w_fused, w_ref)
    assert no_timing(h_fused) == no_timing(h_ref)
    assert all(r["extra_loss"] > 0 for r in h_fused)
    plain = tiny()  # and the term changed the training
    Trainer(plain, *loaders(), cfg(), progress=False).fit()
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                     w_ref.values()))


class Best(Callback):
    """A stateful callback: its state must survive a resume."""

    def __init__(self):
        self.best = 0.0

    def on_epoch_end(self, trainer, record):
        self.best = max(self.best, record["val_acc"])
        record["best_val_acc"] = self.best

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state["best"]


class Loaded(Best):
    """Best, recording the state it was given on resume."""

    loaded = None

    def load_state_dict(self, state):
        self.loaded = dict(state)
        super().load_state_dict(state)


def test_callback_state_survives_resume(tmp_path):
    train, val = loaders()
    killed = Best()
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny(), train, val, cfg(), run_dir=tmp_path, callbacks=[killed, Kill(2)],
                progress=False).fit()
    assert killed.best > 0  # epoch 1 finished and set it
    best = Loaded()
    Trainer(tiny(), train, val, cfg(), run_dir=tmp_path, callbacks=[best, Kill(99)],
            progress=False).fit(resume=True)
    assert best.loaded == {"best": killed.best}  # restored from train_state.pt
    full = Trainer(tiny(), train, val, cfg(), callbacks=[Best()], progress=False).fit()
    assert [r["best_val_acc"] for r in full] == [
        max(r["val_acc"] for r in full[:i + 1]) for i in range(len(full))]
    assert best.best == full[-1]["best_val_acc"]


# -- user models and numerics -------------------------------------------------------------
def test_user_model_trains_and_resumes_without_model_files(tmp_path):
    def user_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 4))

    train, val = loaders()
    a = user_model()
    Trainer(a, train, val, cfg(), progress=False).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(user_model(), train, val, cfg(), run_dir=tmp_path, callbacks=[Kill(2)],
                progress=False).fit()
    assert not (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "train_state.pt").is_file()
    b = user_model()
    Trainer(b, train, val, cfg(), run_dir=tmp_path, progress=False).fit(resume=True)
    states_equal(a.state_dict(), b.state_dict())


def test_bf16_channels_last_progress_bar(capsys):
    train, val = loaders()
    model = tiny()
    h = Trainer(model, train, val, cfg(epochs=1, precision="bf16", channels_last=True),
                progress=True).fit()
    assert math.isfinite(h[0]["train_loss"]) and h[0]["val_acc"] is not None
    assert model.conv1.weight.dtype == torch.float32  # autocast: fp32 master weights
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err


# -- distillation ----------------------------------------------------------------------------

def test_distillation_loss_matches_the_formula():
    import torch.nn.functional as F

    from resprune.train import Distillation

    teacher = tiny(1).eval()
    x = torch.randn(6, 3, 8, 8)
    y = torch.randint(0, 4, (6,))
    s = torch.randn(6, 4)
    ce = F.cross_entropy(s, y)
    d = Distillation(teacher, alpha=0.6, temperature=3.0)
    with torch.no_grad():
        t = teacher(x)
    p_t = F.softmax(t / 3, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 3, 1))).sum(1).mean()
    assert torch.allclose(d.loss(s, x, ce), 0.4 * ce + 0.6 * 9 * kl, atol=1e-6)
    assert d.seconds > 0
    # a student identical to its teacher gets no soft-target loss at all
    same = Distillation(teacher, alpha=1.0, temperature=4.0)
    assert float(same.loss(t, x, ce)) == pytest.approx(0.0, abs=1e-6)
    assert float(Distillation(teacher, alpha=0.0).loss(s, x, ce)) == float(ce)
    with pytest.raises(UserError, match=r"distill_alpha must be a number >= 0 and <= 1"):
        Distillation(teacher, alpha=1.5)


def test_distilled_training_leaves_the_teacher_alone_and_records_its_time(tmp_path):
    from resprune.train import Distillation

    train, val = loaders()
    teacher = tiny(1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = Distillation(teacher, alpha=0.5)
    hist = Trainer(tiny(), train, val, cfg(), distill=d, progress=False).fit()
    assert all(r["teacher_seconds"] > 0 for r in hist)
    states_equal(d.teacher.state_dict(), before)  # weights and BN statistics untouched
    assert not d.teacher.training
    # alpha 0 is exactly plain training
    a = Trainer(tiny(), train, val, cfg(), progress=False)
    a.fit()
    b = Trainer(tiny(), train, val, cfg(), distill=Distillation(teacher, alpha=0.0),
                progress=False)
    b.fit()
    states_equal(a.model.state_dict(), b.model.state_dict())


def test_mix_blends_the_batch_and_both_labels_from_its_own_seed():
    import torch.nn.functional as F

    from resprune.train.mixup import mix

    x = torch.randn(8, 3, 4, 4)
    y = torch.arange(8)  # distinct labels: y_other names the partner image
    state = torch.get_rng_state()
    m = mix(x, y, 1.0, seed=3, epoch=2, step=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not drawn from
    assert 0 < m.lam < 1 and torch.equal(m.y, y)
    assert sorted(m.y_other.tolist()) == list(range(8))
    assert torch.allclose(m.x, m.lam * x + (1 - m.lam) * x[m.y_other])
    again = mix(x, y, 1.0, seed=3, epoch=2, step=5)
    assert again.lam == m.lam and torch.equal(again.x, m.x)
    others = {mix(x, y, 1.0, seed=3, epoch=2, step=s).lam for s in range(6, 10)}
    others.add(mix(x, y, 1.0, seed=3, epoch=2, step=5, rank=1).lam)
    assert m.lam not in others and len(others) == 5
    logits = torch.randn(8, 8)
    assert torch.allclose(m.cross_entropy(logits, 0.1),
                          m.lam * F.cross_entropy(logits, y, label_smoothing=0.1)
                          + (1 - m.lam) * F.cross_entropy(logits, m.y_other,
                                                          label_smoothing=0.1))
    assert torch.equal(m.dominant(), y if m.lam >= 0.5 else m.y_other)


@pytest.mark.parametrize("mixup, channels_last", [(0.0, False), (0.4, False), (0.4, True)])
def test_mixup_feeds_the_student_and_the_teacher_the_same_mixed_batch(mixup, channels_last):
    from resprune.train import Distillation
    from resprune.train.mixup import mix

    train, val = loaders()
    config = cfg(epochs=1, mixup=mixup, channels_last=channels_last)
    train.set_epoch(0)
    x0, y0 = next(iter(train))
    expected = mix(x0, y0, mixup, config.seed, 1, 0).x if mixup else x0
    seen = {}

    def first(name):
        def keep(module, inputs, output):
            if name not in seen:
                seen[name] = inputs[0].detach()
                seen[name + " layout"] = inputs[0].is_contiguous(
                    memory_format=torch.channels_last)
        return keep

    student, d = tiny(), Distillation(tiny(1), alpha=0.5)
    student.register_forward_hook(first("student"))
    d.teacher.register_forward_hook(first("teacher"))
    Trainer(student, train, val, config, distill=d, progress=False).fit()
    assert torch.equal(seen["student"], expected)
    assert torch.equal(seen["teacher"], expected)
    assert seen["student layout"] == channels_last  # mixup keeps the memory format
    assert mixup == 0 or not torch.equal(expected, x0)


def test_attention_transfer_matches_its_formula_and_reads_only_training_forwards():
    """beta / 2 * sum over stages of mean((q_s - q_t)^2), q = per-image L2-normalised mean of
    f^2 over channels, read by hooks from the student's training forward and the teacher's;
    zero for a student equal to its teacher; a narrower student needs no adapter."""
    import torch.nn.functional as F

    from resprune.train import Distillation
    from resprune.train.distill import attention_map

    teacher = tiny(1).eval()
    student = create("resnet8", num_classes=4, width=2).train()  # half the channels
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    d = Distillation(teacher, alpha=0.5, temperature=2.0, attention=1000.0)
    kd = Distillation(teacher, alpha=0.5, temperature=2.0)

    def outputs(model):
        seen = []
        hooks = [getattr(model, f"layer{i}").register_forward_hook(
            lambda m, i_, o: seen.append(o)) for i in (1, 2, 3)]
        logits = model(x)
        for h in hooks:
            h.remove()
        return logits, seen

    d.attach(student)
    s, fs = outputs(student)
    ce = F.cross_entropy(s, y)
    with torch.no_grad():
        _, ft = outputs(teacher)
    q = lambda f: F.normalize(f.pow(2).mean(1).reshape(f.shape[0], -1), dim=1)  # noqa: E731
    at = 500.0 * sum(((q(a) - q(b)) ** 2).mean() for a, b in zip(fs, ft))
    got = d.loss(s, x, ce)
    assert at > 0 and torch.allclose(got, kd.loss(s, x, ce) + at, rtol=1e-5)
    assert d.inner_means() == {"attention_loss": pytest.approx(float(at.detach()), rel=1e-5)}
    got.backward()
    assert student.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert torch.allclose(attention_map(fs[0]).norm(dim=1), torch.ones(6))
    # validation forwards (eval mode or no grad) are not read: the loss asks for a training one
    student.eval()
    with torch.no_grad():
        student(x)
    with pytest.raises(UserError, match="run the student's training forward"):
        d.loss(s, x, ce)
    # a student equal to its teacher: no attention loss; attaching again moves the hooks
    twin = copy_of(teacher).train()
    for m in twin.modules():  # BN as in the teacher (running statistics), stages training
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    d.attach(twin)
    t = twin(x)
    d.teacher_logits(x)
    assert d.attention_loss().item() == 0.0
    student.train()
    student(x)  # the first student's hooks are gone
    with pytest.raises(UserError, match="run the student's training forward"):
        d.attention_loss()
    assert t.shape == (6, 4)
    with pytest.raises(UserError, match=r"distill_attention must be a number >= 0"):
        Distillation(teacher, attention=-1.0)
    from resprune.models import build, model_spec

    spec = model_spec("resnet8", num_classes=4, width=4)
    spec["stages"] = spec["stages"][:2]
    with pytest.raises(UserError, match="the student has 2, the teacher 3"):
        d.attach(build(spec))
    with pytest.raises(UserError, match="layer1 ... layerN of a resprune ResNet; the student"):
        d.attach(nn.Sequential(nn.Flatten(), nn.Linear(192, 4)))


def test_feature_distillation_matches_its_formula_pairs_units_and_refuses_narrow_streams():
    """beta * mean over the units both have of mean((f_s - f_t)^2) / mean(f_t^2), read by
    hooks from the student's training forward and the teacher's; an erased unit is skipped;
    zero for a twin; a pruned residual stream is refused with one clear line."""
    import torch.nn.functional as F

    from resprune.implosion.erase import erase_units
    from resprune.train import Distillation

    teacher = tiny(1).eval()
    student = tiny(2).train()  # same widths, other weights
    erase_units(student, ["layer1.0"])  # its slot has no output of its own to pull
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    d = Distillation(teacher, alpha=0.5, temperature=2.0, features=3.0)
    kd = Distillation(teacher, alpha=0.5, temperature=2.0)

    def outputs(model, names):
        seen = {}
        hooks = [model.get_submodule(n).register_forward_hook(
            lambda m, i_, o, n=n: seen.__setitem__(n, o)) for n in names]
        logits = model(x)
        for h in hooks:
            h.remove()
        return logits, seen

    names = [n for n, m in teacher.units() if n != "layer1.0"]
    assert len(names) == len(teacher.units()) - 1 == 2
    d.attach(student)
    s, fs = outputs(student, names)
    ce = F.cross_entropy(s, y)
    with torch.no_grad():
        _, ft = outputs(teacher, names)
    want = 3.0 * sum(((fs[n] - ft[n]) ** 2).mean() / (ft[n] ** 2).mean() for n in names) / 2
    got = d.loss(s, x, ce)
    assert want > 0 and torch.allclose(got, kd.loss(s, x, ce) + want, rtol=1e-5)
    assert d.inner_means() == {"feature_loss": pytest.approx(float(want.detach()), rel=1e-5)}
    got.backward()
    assert student.layer2[0].conv1.weight.grad.abs().sum() > 0
    d.reset()
    assert d.inner_means() == {}
    # a twin of the teacher (BN on its running statistics): no feature loss
    twin = copy_of(teacher).train()
    for m in twin.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    d.attach(twin)
    twin(x)
    d.teacher_logits(x)
    assert d.feature_loss().item() == 0.0
    with pytest.raises(UserError, match="run the student's training forward"):
        d.feature_loss()  # each output is read once
    with pytest.raises(UserError, match=r"distill_features must be a number >= 0"):
        Distillation(teacher, features=-1.0)
    narrow = create("resnet8", num_classes=4, width=2).train()
    d.attach(narrow)
    narrow(x)
    d.teacher_logits(x)
    with pytest.raises(UserError, match=r"unit layer1.0 outputs \(2, 8, 8\) in the student, "
                                        r"\(4, 8, 8\) in the teacher .*--distill-attention"):
        d.feature_loss()
    with pytest.raises(UserError, match="residual units of a resprune ResNet; the student"):
        d.attach(nn.Sequential(nn.Flatten(), nn.Linear(192, 4)))


def copy_of(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("term, key", [("attention", "attention_loss"),
                                       ("features", "feature_loss")])
def test_inner_distillation_terms_train_and_beta_zero_is_plain_distillation(term, key):
    from resprune.train import Distillation

    train, val = loaders()
    teacher = tiny(1)
    runs = {}
    for beta in (0.0, 10.0):
        tr = Trainer(tiny(), train, val, cfg(), progress=False,
                     distill=Distillation(teacher, alpha=0.5, **{term: beta}))
        history = tr.fit()
        runs[beta] = tr.model.state_dict()
        # metrics.jsonl carries the epoch's mean of the term when it is on
        assert all((r.get(key) or 0) > 0 for r in history) == (beta > 0)
        assert all((key in r) == (beta > 0) for r in history)
    ref = Trainer(tiny(), train, val, cfg(), progress=False,
                  distill=Distillation(teacher, alpha=0.5))
    ref.fit()
    states_equal(runs[0.0], ref.model.state_dict())
    assert any(not torch.equal(runs[0.0][k], runs[10.0][k]) for k in runs[0.0])


def test_lambda_raise_schedule_and_its_state():
    from resprune.vacl import LamSchedule, Regularizer

    model = tiny()
    reg = Regularizer(model, lam=1e-3, input_shape=(3, 8, 8))
    sched = LamSchedule(reg, "raise", growth=2.0, target_share=0.5, near_zero=0.05)

    class T:
        pass

    t = T()
    t.model = model
    sched.on_fit_start(t)
    rec: dict = {}
    sched.on_epoch_end(t, rec)  # nothing near zero yet: raised
    assert rec == {"lam": 1e-3, "near_zero_share": 0.0} and reg.lam == 2e-3
    with torch.no_grad():  # zero every group: share 1 >= 0.5, lambda stays
        for p in model.parameters():
            p.zero_()
    sched.on_epoch_end(t, rec)
    assert rec["near_zero_share"] == 1.0 and reg.lam == 2e-3
    state = sched.state_dict()
    other = LamSchedule(Regularizer(tiny(), lam=1e-3, input_shape=(3, 8, 8)), "raise",
                        target_share=0.5)
    other.load_state_dict(state)
    assert other.reg.lam == 2e-3 and torch.equal(other.initial, sched.initial)
    with pytest.raises(UserError, match="needs the share of groups"):
        LamSchedule(reg, "raise")
