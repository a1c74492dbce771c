"""Several processes, one run (torchrun, gloo on the CPU).

In-process tests check the pieces with exact arithmetic: the loaders' shards make up the
one-process batches, ``evaluate`` sums over processes, rank 0 alone touches the disk, the
global-batch BatchNorm swaps in and out without changing a tensor. The torchrun tests start
real process groups of two CPU processes (each ~10-25 s):

- ``train`` in two processes with ``--sync-bn`` equals one process with the same global
  batch, to float32 rounding. The processes sum the BatchNorm statistics and the gradients
  in another order than one process does, and training amplifies rounding differences, so
  the tolerance is measured, not guessed: the same one-process run in channels_last memory
  layout (the same arithmetic in another order) is the reference, and two processes must
  differ from one process by no more than that (measured: 6.7e-5 against 2.9e-3). Without
  ``--sync-bn`` each process normalises over its half of the batch and the weights differ by
  more than ten times the reference (measured 0.11), which shows the test can fail.
- ``compress --stages implode,vacl`` in two processes erases the same units and prunes to the
  same widths as in one.
- a two-process run killed in the middle of a checkpoint write resumes in two processes to the
  weights of the uninterrupted run, and in one process to a finished run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import resprune
from resprune import distributed, io
from resprune.data.imagefolder import _EpochSampler
from resprune.data.loader import InMemoryLoader, Shard
from resprune.errors import UserError
from resprune.measure import evaluate
from resprune.train.syncbn import GlobalBatchNorm2d, global_batchnorm

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

TINY = ["--model", "resnet8", "--width", "4", "--data", "synthetic", "--val-fraction", "0.125",
        "--batch-size", "32", "--device", "cpu", "--no-progress"]
TRAIN = ["train", *TINY, "--epochs", "2", "--lr", "0.05"]


# -- in-process: the pieces -----------------------------------------------------------------

def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
            torch.arange(n) % 10)


@pytest.mark.parametrize("world", [2, 3])
def test_training_shards_are_slices_of_the_one_process_batches(world):
    x, y = _images(101)
    common = dict(train=True, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3, epoch_size=None)
    whole = InMemoryLoader(x, y, 12, shard=(0, 1), **common)
    parts = [InMemoryLoader(x, y, 12, shard=(r, world), **common) for r in range(world)]
    kept = 101 - 101 % world  # the epoch drops up to world - 1 samples
    assert all(p.num_samples == kept for p in parts) and whole.num_samples == 101
    assert {len(p) for p in parts} == {-(-kept // 12)}
    for epoch in (0, 5):
        for p in [whole, *parts]:
            p.set_epoch(epoch)
        one = list(whole)
        many = list(zip(*parts))
        assert len(many) == len(parts[0])
        for k, batches in enumerate(many):
            xs = torch.cat([b[0] for b in batches])
            ys = torch.cat([b[1] for b in batches])
            sizes = {b[0].shape[0] for b in batches}
            assert len(sizes) == 1  # equal slices: DDP's mean of means is the global mean
            n = xs.shape[0]
            assert torch.equal(xs, one[k][0][:n]) and torch.equal(ys, one[k][1][:n])


def test_evaluation_shards_cover_the_split_once():
    x, y = _images(50)
    common = dict(train=False, mean=(0.5,) * 3, std=(0.25,) * 3)
    whole = torch.cat([b[1] for b in InMemoryLoader(x, y, 8, shard=(0, 1), **common)])
    parts = [torch.cat([b[1] for b in InMemoryLoader(x, y, 8, shard=(r, 3), **common)])
             for r in range(3)]
    assert [p.numel() for p in parts] == [17, 17, 16]
    assert torch.equal(torch.cat(parts), whole)


def _indices(sampler: _EpochSampler, epoch: int = 0) -> list[int]:
    sampler.epoch = epoch
    pairs = list(sampler)
    assert {e for e, _ in pairs} <= {epoch}  # the epoch travels with every index
    return [i for _, i in pairs]


def test_imagefolder_sampler_shards_like_the_in_memory_loader():
    n, batch, world = 37, 8, 2
    kept = n - n % world
    whole = _indices(_EpochSampler(n, True, seed=1, k=kept, batch=batch, shard=Shard((0, 1))))
    parts = [_indices(_EpochSampler(n, True, seed=1, k=kept, batch=batch,
                                    shard=Shard((r, world)))) for r in range(world)]
    rebuilt = []
    for k in range(0, kept, batch):
        m = min(batch, kept - k) // world
        for p in parts:
            rebuilt += p[k // world:k // world + m]
    assert rebuilt == whole
    evals = [_indices(_EpochSampler(n, False, 0, k=n, batch=batch, shard=Shard((r, world))), 3)
             for r in range(world)]
    assert evals[0] + evals[1] == list(range(n))


def test_a_batch_that_does_not_divide_is_one_clear_error():
    x, y = _images(20)
    with pytest.raises(UserError, match="batch size 10 does not divide evenly over 3 "
                                        "processes; use a multiple of 3"):
        InMemoryLoader(x, y, 10, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, shard=(0, 3))


def test_evaluate_sums_over_processes(monkeypatch):
    """Process 0 of two evaluates its half; the all-reduce adds the other half's sums."""
    torch.manual_seed(0)
    model = resprune.create("resnet8", width=4, num_classes=10).eval()
    x = torch.randn(40, 3, 32, 32)
    y = torch.arange(40) % 10
    halves = [[(x[:20], y[:20])], [(x[20:], y[20:])]]
    whole = evaluate(model, [(x, y)])
    other = evaluate(model, halves[1])
    others = [torch.tensor(other["n"]), torch.tensor(round(other["top1"] * other["n"])),
              torch.tensor(round(other["top5"] * other["n"])),
              torch.tensor(other["loss"] * other["n"], dtype=torch.float64)]

    def add_other(*tensors):
        for t, o in zip(tensors, others):
            t += o.to(t.dtype)

    monkeypatch.setattr(distributed, "all_reduce_sum", add_other)
    got = evaluate(model, halves[0])
    assert got["n"] == 40 and got["top1"] == whole["top1"] and got["top5"] == whole["top5"]
    assert got["loss"] == pytest.approx(whole["loss"], rel=1e-6)


@pytest.mark.parametrize("main", [True, False])
def test_only_rank_zero_touches_the_disk(tmp_path, monkeypatch, main):
    barriers = []
    monkeypatch.setattr(distributed, "enabled", lambda: True)
    monkeypatch.setattr(distributed, "is_main", lambda: main)
    monkeypatch.setattr(distributed, "barrier", lambda: barriers.append(1))
    io.atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").is_file() == main and len(barriers) == 2  # before and after
    (tmp_path / "b.txt").write_text("keep?")
    io.remove(tmp_path / "b.txt")
    assert (tmp_path / "b.txt").exists() != main and len(barriers) == 4
    io.atomic_write_text(tmp_path / "cache.txt", "mine", collective=False)
    assert (tmp_path / "cache.txt").read_text() == "mine" and len(barriers) == 4


def test_global_batchnorm_swaps_in_and_out_with_the_same_tensors():
    model = resprune.create("resnet8", width=4, num_classes=10)
    before = {id(t) for t in model.state_dict(keep_vars=True).values()}
    keys = list(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    ref = model.eval()(x)
    with global_batchnorm(model) as m:
        bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
        assert bns and all(type(b) is GlobalBatchNorm2d for b in bns)
        assert list(m.state_dict()) == keys
        assert {id(t) for t in m.state_dict(keep_vars=True).values()} == before
        assert torch.equal(m(x), ref)  # one process, eval: exactly BatchNorm2d
    assert all(type(b) is torch.nn.BatchNorm2d for b in model.modules()
               if isinstance(b, torch.nn.BatchNorm2d))
    assert {id(t) for t in model.state_dict(keep_vars=True).values()} == before


def test_batchnorm_reestimation_ends_with_rank_zeros_statistics_everywhere(monkeypatch):
    """Each process re-estimates on its own share; then every running statistic (and only
    those) is broadcast from rank 0, after the estimate, so all processes hold one model."""
    from resprune.measure import recalibrate_batchnorm

    torch.manual_seed(0)
    model = resprune.create("resnet8", width=4, num_classes=10)
    x, y = _images(32)
    loader = InMemoryLoader(x, y, 8, train=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    rank0 = {}

    def from_rank_zero(*tensors):  # what another process receives: rank 0's values
        for t in tensors:
            rank0[id(t)] = t.clone()
            t.fill_(7)

    monkeypatch.setattr(distributed, "broadcast_tensors", from_rank_zero)
    assert recalibrate_batchnorm(model, loader, 16) == 16
    stats = {k: v for k, v in model.state_dict(keep_vars=True).items()
             if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert {id(t) for t in stats.values()} == set(rank0) and len(stats) == len(rank0)
    assert all(bool((t == 7).all()) for t in stats.values())  # overwritten: broadcast last
    # the values broadcast are the re-estimated ones (2 batches of 8: counted 2 times)
    assert all(int(rank0[id(t)]) == 2 for k, t in stats.items()
               if k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("batches", [3, 4, 9])
def test_screening_scores_the_samples_one_process_scores(monkeypatch, batches):
    """Implosion's screen loss over the first batches: each process scores the part of them
    in its block; the summed (loss, count) are the one-process numbers."""
    from resprune.implosion.candidates import _loss_on

    torch.manual_seed(0)
    model = resprune.create("resnet8", width=4, num_classes=10).eval()
    x, y = _images(50)
    common = dict(train=False, mean=(0.5,) * 3, std=(0.25,) * 3)
    one = _loss_on(model, InMemoryLoader(x, y, 8, shard=(0, 1), **common), batches)
    seen = []
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda t: seen.append(t.clone()))
    for r in range(2):
        _loss_on(model, InMemoryLoader(x, y, 8, shard=(r, 2), **common), batches)
    total = seen[0] + seen[1]
    assert int(total[1]) == min(8 * batches, 50)
    assert float(total[0] / total[1]) == pytest.approx(one, rel=1e-6)


def test_shard_bounds_split_evenly():
    assert [distributed.shard_bounds(10, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 8),
                                                                      (8, 10)]


# -- torchrun: real process groups --------------------------------------------------------

def torchrun(args: list[str], nproc: int = 2, env: dict | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "resprune", *args]
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def weights(run: Path) -> dict[str, torch.Tensor]:
    return resprune.load(run).state_dict()


def max_diff(a: Path, b: Path) -> float:
    x, y = weights(a), weights(b)
    assert x.keys() == y.keys()
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x
               if x[k].is_floating_point())


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """The same training in one process and in two (--sync-bn), printed with --json."""
    from resprune.cli.main import main

    root = tmp_path_factory.mktemp("ddp")
    assert main([*TRAIN, "--sync-bn", "--out", str(root / "one")]) == 0
    assert main([*TRAIN, "--channels-last", "--out", str(root / "reordered")]) == 0
    two = torchrun([*TRAIN, "--sync-bn", "--json", "--out", str(root / "two")])
    return root, two


@needs_gloo
def test_two_processes_train_like_one_with_the_same_global_batch(one_and_two):
    root, two = one_and_two
    noise = max_diff(root / "one", root / "reordered")  # same arithmetic, another order
    assert 0 < max_diff(root / "one", root / "two") <= noise
    summary = json.loads((root / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["config"]["sync_bn"] is True
    assert two.stdout.count("\n") == 1 and json.loads(two.stdout) == summary  # rank 0 only
    one_m, two_m = ([json.loads(line) for line in (root / r / "metrics.jsonl").open()]
                    for r in ("one", "two"))
    for a, b in zip(one_m, two_m, strict=True):
        assert a["samples"] == b["samples"] == 448
        assert abs(a["val_acc"] - b["val_acc"]) <= 1 / 64 + 1e-12  # at most one image
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    state = resprune.io.safe_torch_load(root / "two" / "train_state.pt")
    assert state["world_size"] == 2


@needs_gloo
def test_without_sync_bn_the_processes_normalise_their_own_halves(one_and_two, tmp_path):
    root, _ = one_and_two
    torchrun([*TRAIN, "--out", str(tmp_path / "local")])
    noise = max_diff(root / "one", root / "reordered")
    assert max_diff(root / "one", tmp_path / "local") > 10 * noise


@needs_gloo
def test_two_processes_erase_and_prune_like_one(one_and_two, tmp_path):
    from resprune.cli.main import main

    root, _ = one_and_two
    args = ["compress", str(root / "one"), "--stages", "implode,vacl", *TINY[4:], "--sync-bn",
            "--retrain-epochs", "1", "--max-steps", "2", "--per-step", "1", "--tolerance", "50",
            "--score", "norm", "--screen", "2", "--screen-batches", "1",
            "--sparse-epochs", "1", "--finetune-epochs", "1", "--target-params-reduction",
            "0.5", "--reconstruct", "32"]  # re-fits after both stages' removals, too
    assert main([*args, "--out", str(tmp_path / "c1")]) == 0
    torchrun([*args, "--out", str(tmp_path / "c2")])
    runs = {}
    for name in ("c1", "c2"):
        state = json.loads((tmp_path / name / "stages/1-implode/state.json").read_text())
        vacl = json.loads((tmp_path / name / "stages/2-vacl/summary.json").read_text())
        runs[name] = (state["erased"], [h["accepted"] for h in state["history"]],
                      vacl["widths"], vacl["prune"]["groups_removed"])
    assert runs["c1"] == runs["c2"]
    assert runs["c1"][0] and runs["c1"][3]  # something was erased and pruned
    assert json.loads((tmp_path / "c2/summary.json").read_text())["world_size"] == 2


@needs_gloo
def test_a_killed_two_process_run_resumes(one_and_two, tmp_path):
    root, _ = one_and_two
    # writes: command.json, then 4 per epoch (metrics, model, arch, train_state):
    # the 7th is epoch 2's model file, killed half-written on rank 0
    p = torchrun([*TRAIN, "--sync-bn", "--out", str(tmp_path / "again")],
                 env={io.KILL_AT_WRITE_ENV: "7"}, check=False)
    assert p.returncode != 0
    assert resprune.io.safe_torch_load(tmp_path / "again" / "train_state.pt")["epoch"] == 1
    shutil.copytree(tmp_path / "again", tmp_path / "fewer")
    torchrun([*TRAIN, "--sync-bn", "--out", str(tmp_path / "again"), "--resume"])
    assert max_diff(root / "two", tmp_path / "again") == 0.0
    # another world size: the global batch and the steps are the same, so it just goes on
    from resprune.cli.main import main

    assert main([*TRAIN, "--sync-bn", "--out", str(tmp_path / "fewer"), "--resume"]) == 0
    summary = json.loads((tmp_path / "fewer" / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["epochs"] == 2
    assert max_diff(root / "two", tmp_path / "fewer") <= max_diff(root / "one",
                                                                  root / "reordered")
