"""No decision ever reads the test split: a guard that fails when a decision path iterates it.

Every command builds its loaders through ``resprune.cli.common.make_loaders``; here the test
loader it returns is wrapped so that iterating it raises unless a *reporting* function is on
the stack (``resprune.measure.summary.accuracy``, through which every command reports
accuracy). Implosion's acceptance and screening, VACL's auto-tolerance and lambda schedule,
the trainers' per-epoch validation and compress's budget split must therefore all run on the
validation split, or these tests fail.
"""

from __future__ import annotations

import contextlib

import pytest

from resprune.cli import common
from resprune.cli.main import main
from resprune.measure import summary as measures

BASE = ["--data", "synthetic", "--batch-size", "32", "--no-progress"]
_reporting = {"depth": 0, "reads": 0}


class SplitReadError(AssertionError):
    pass


class Guarded:
    """A loader whose iteration outside a reporting function is an error."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        if _reporting["depth"] == 0:
            raise SplitReadError("a decision path iterated the test split")
        _reporting["reads"] += 1
        return iter(self.inner)


@contextlib.contextmanager
def reporting():
    _reporting["depth"] += 1
    try:
        yield
    finally:
        _reporting["depth"] -= 1


def _reporter(fn):
    def wrapped(*args, **kwargs):
        with reporting():
            return fn(*args, **kwargs)
    return wrapped


@pytest.fixture
def guard(monkeypatch):
    real = common.make_loaders

    def make_loaders(*args, **kwargs):
        train, val, test = real(*args, **kwargs)
        return train, val, Guarded(test)

    monkeypatch.setattr(common, "make_loaders", make_loaders)
    monkeypatch.setattr(measures, "accuracy", _reporter(measures.accuracy))
    _reporting["reads"] = 0
    yield
    # the guarded loaders are the ones the command used: its reports did read them
    assert _reporting["reads"] > 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("guard") / "base"
    assert main(["train", "--model", "resnet8", "--width", "4", *BASE, "--epochs", "1",
                 "--out", str(out)]) == 0
    return out


def test_guard_catches_a_test_split_read(guard):
    with pytest.raises(SplitReadError):
        iter(Guarded([1, 2]))
    with reporting():
        assert list(Guarded([1, 2])) == [1, 2]


def test_implode_decides_on_validation(guard, trained, tmp_path):
    code = main(["implode", str(trained), "--tolerance", "0", "--patience", "2",
                 "--screen", "2", "--max-steps", "2", "--retrain-epochs", "1",
                 "--adapt-epochs", "1", "--distill-from", "input", "--no-progress",
                 "--out", str(tmp_path / "imp")])
    assert code == 0


def test_vacl_auto_tolerance_and_schedule_decide_on_validation(guard, trained, tmp_path):
    code = main(["vacl", str(trained), "--auto-tolerance", "5", "--sparse-epochs", "2",
                 "--finetune-epochs", "1", "--lam", "1e-3", "--lam-schedule", "raise",
                 "--lam-target-share", "0.3", "--no-progress", "--out", str(tmp_path / "v")])
    assert code == 0


def test_compress_decides_on_validation(guard, trained, tmp_path):
    code = main(["compress", str(trained), "--target-params-reduction", "0.5",
                 "--max-steps", "1", "--retrain-epochs", "1", "--adapt-epochs", "1",
                 "--sparse-epochs", "1", "--finetune-epochs", "1", "--finetune-final-epochs",
                 "1", "--no-progress", "--out", str(tmp_path / "c")])
    assert code == 0
