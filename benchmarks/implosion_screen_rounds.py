"""Which units a one-step implosion cuts, screened alone or in rounds (``--screen-rounds``).

For each per-step count k, screen cost and number of rounds R: the units
:func:`resprune.implosion.candidates.screened_choice` chooses on a trained run (every
erasable unit a candidate, as rows 1l / 3n screen all 25 of ResNet-56), and what the net
loses when they are cut together: validation top-1 and loss of the cut net after BatchNorm
re-estimation on ``--recalibrate`` training images, no training (the step's
``cut_val_top1``). The screen's settings are rows 3n / 3o's (``--screen-batches 6
--recalibrate 2048``, step 1's seed). Rounds that share their first screenings reuse them
(same erased set, same candidates, same seed: the same losses). Decisions and numbers use
the validation split carved from ``train/`` (``--val-fraction 0.1 --seed 0``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/implosion_screen_rounds.py /work/runs/r56-B \\
        --per-step 12 --screen-cost none --rounds 1 3 6 --screen-cost params --rounds 1 3
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, machine_info, md_table  # noqa: E402

DATA = REPO.parent / "shared" / "datasets" / "cifar10-jpeg"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--per-step", type=int, nargs="+", default=[12])
    ap.add_argument("--screen-cost", action="append", default=None,
                    help="none, params or macs; each is followed by its --rounds")
    ap.add_argument("--rounds", type=int, nargs="+", action="append", default=None)
    ap.add_argument("--screen-batches", type=int, default=6)
    ap.add_argument("--recalibrate", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=1, help="the screen's seed (step 1: 0 + 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "implosion_screen_rounds.md")
    a = ap.parse_args(argv)
    costs = a.screen_cost or ["none"]
    rounds = a.rounds or [[1]]
    if len(rounds) != len(costs):
        ap.error("give one --rounds list after each --screen-cost")
    torch.set_num_threads(a.threads)

    import resprune
    import resprune.implosion.candidates as cand
    from resprune.data import load_dataset, make_loader
    from resprune.implosion import ImplosionConfig
    from resprune.implosion.erase import erase_units
    from resprune.implosion.gates import erasable_items, unit_weight_layers
    from resprune.measure import count_macs, count_params, evaluate, recalibrate_batchnorm
    from resprune.measure.counts import depth as net_depth

    base = resprune.load(a.run).eval()
    bundle = load_dataset("imagefolder", a.data_dir, val_fraction=0.1, seed=0,
                          preprocess=base.preprocess, progress=False)
    train = make_loader(bundle, "train", 128, train=True, seed=0, epoch_size=10000)
    val = make_loader(bundle, "val", 256, train=False)
    shape = tuple(next(iter(val))[0].shape[1:])
    names = [n for n, _ in erasable_items(base)]
    depths = {n: unit_weight_layers(u) for n, u in erasable_items(base)}
    p0, m0, d0 = count_params(base), count_macs(base, shape), net_depth(base)

    # the screen's losses depend on the erased set, the candidates and the seed only
    memo: dict = {}
    calls = {"evaluated": 0, "reused": 0}
    screen, intact = cand.screen, cand.intact_loss

    def cut_now(model: nn.Module) -> tuple[str, ...]:
        return tuple(n for n in names if isinstance(model.get_submodule(n), nn.Identity))

    def memo_screen(run, candidates, seed=0):
        key = ("screen", cut_now(run.model), tuple(sorted(candidates)), seed)
        if key not in memo:
            memo[key] = screen(run, candidates, seed)
            calls["evaluated"] += len(memo[key])
        else:
            calls["reused"] += len(memo[key])
        return memo[key]

    def memo_intact(run, seed=0):
        key = ("intact", cut_now(run.model), seed)
        if key not in memo:
            memo[key] = intact(run, seed)
            calls["evaluated"] += 1
        return memo[key]

    cand.screen, cand.intact_loss = memo_screen, memo_intact
    body = []
    for k in a.per_step:
        for cost, rs in zip(costs, rounds):
            for r in rs:
                cfg = ImplosionConfig(per_step=k, screen=len(names), screen_cost=cost,
                                      screen_rounds=r, screen_batches=a.screen_batches,
                                      recalibrate=a.recalibrate).validate()
                unit_cost = (None if cost == "none" else
                             cand.unit_costs(Path("."), base, shape, cfg, cost))
                run = SimpleNamespace(config=cfg, model=base, train_loader=train,
                                      val_loader=val, screen_cost=unit_cost)
                before = dict(calls)
                t0 = time.monotonic()
                chosen, _ = cand.screened_choice(run, {n: 0.0 for n in names}, depths, d0,
                                                 a.seed)
                wall = time.monotonic() - t0
                m = copy.deepcopy(base)
                erase_units(m, chosen)
                recalibrate_batchnorm(m, train, a.recalibrate, a.seed)
                ev = evaluate(m, val)
                p, mac = count_params(m), count_macs(m, shape)
                body.append([k, cost, r, ", ".join(sorted(chosen)),
                             f"{100 * (1 - p / p0):.1f} / {100 * (1 - mac / m0):.1f} / "
                             f"{100 * (1 - net_depth(m) / d0):.2f}",
                             f"{100 * ev['top1']:.2f}", f"{ev['loss']:.4f}",
                             calls["evaluated"] - before["evaluated"],
                             calls["reused"] - before["reused"], f"{wall:.0f}"])
                print(" | ".join(map(str, body[-1])), flush=True)
    cand.screen, cand.intact_loss = screen, intact
    cmd = " ".join(["python benchmarks/implosion_screen_rounds.py", str(a.run),
                    "--per-step", *map(str, a.per_step),
                    *[f"--screen-cost {c} --rounds {' '.join(map(str, rs))}"
                      for c, rs in zip(costs, rounds)],
                    f"--screen-batches {a.screen_batches} --recalibrate {a.recalibrate}",
                    f"--seed {a.seed} --threads {a.threads}"])
    text = "\n".join([
        "# One-step implosion: units screened alone or in rounds (--screen-rounds)\n",
        f"Command: `{cmd}`  ",
        f"Machine: {machine_info(1)}.\n",
        "Every erasable unit is a candidate; the chosen units are cut together and the net's "
        f"BatchNorm statistics re-estimated on {a.recalibrate} training images; val top-1 and "
        "loss on the whole validation split carved from `train/`, no training. Screen "
        "evaluations: cut nets scored for this row (reused: scored for an earlier row with "
        "the same erased set). Wall: the choice alone, seconds.\n",
        md_table(["k", "screen cost", "rounds", "units cut", "params / MACs / layers removed %",
                  "val top-1 after the cut %", "val loss", "screen evaluations", "reused",
                  "wall s"], body), ""])
    a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
