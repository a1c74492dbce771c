"""The headline evidence: a converged ResNet-56 compressed on real CIFAR-10 images (JPEG).

Rows (each one run directory under ``--runs``, all starting from B and deciding on B's
validation split, carved from ``train/`` with ``--val-fraction 0.1 --seed 0``):

- ``r56-imported``: akamaster's published ResNet-56, imported (``resprune import``);
- ``r56-B``: B, the imported model adapted to the JPEG images (``resnet56-adapt.yaml``);
- ``r56-implode-fade``: Network Implosion alone (``resnet56-implode.yaml``: units faded out);
- ``r56-vacl-fade``: VACL to 79.5 % fewer params (``resnet56-vacl.yaml``: groups faded out);
- ``r56-vacl50-fade``: the same recipe to 50 % fewer params, on a smaller budget;
- ``r56-vacl-cap60``: row 2 with ``--max-layer-reduction 0.6`` (no layer loses more than
  60 % of its channels; uncapped, the stage-1 residual stream kept 2 of 16);
- ``r56-compress-fade``: implode -> VACL -> fine-tune to 85 % fewer params
  (``resnet56-compress.yaml``);
- ``r56-implode``, ``r56-vacl``, ``r56-compress``: the first attempt (units cut, a lambda
  schedule instead of fades; the configs as of commit 62967bd);
- ``r56-tp-groupnorm``: torch-pruning's GroupNormPruner matched to the first compress row's
  MACs, with the same per-epoch size and distillation (``_tp_baselines.py``);
- ``r56-compress-nodistill``: row 3d without distillation (ablation: no teacher in any stage);
- ``r56-compress-cap65``: row 3 with ``--max-layer-reduction 0.65`` (0.6 cannot reach 85 %
  of params);
- ``r56-tp-groupnorm-cap``: GroupNormPruner at 3c's MACs on 3c's budget (180,000 samples);
- ``r56-implode-p1-lr0.01``: implosion one unit a step, each faded out over a 10,000-image
  retraining (the "per-step 1" recipe);
- ``r56-vacl-taylor``: VACL to 79.5 % fewer params ranked by Taylor importance
  (``--group-score taylor``), B pruned as it is (no sparsity training), 100,000 distilled
  fine-tuning samples;
- ``r56-compress-taylor``: compress with row 2d's recipe in its vacl stage (Taylor ranking,
  no sparsity training, no fade), the vacl stage's 3 and the final 8 fine-tuning epochs
  distilled: at most 150,000 samples;
- ``r56-vacl-taylor-150k``: row 2d with 15 fine-tuning epochs (150,000 distilled samples);
- ``r56-compress-taylor-260k``: row 3d with a 20-epoch final fine-tune (260,000 samples);
- ``r56-vacl-taylor-lr05``: row 2d with a fine-tuning learning rate of 0.05 instead of 0.01
  (a probe of the recovery learning rate at 100,000 samples);
- ``r56-vacl-taylor-450k``, ``r56-compress-taylor-450k``: rows 2d and 3d on the issue's full
  budget of 450,000 samples (45 fine-tuning epochs; 39 final fine-tuning epochs), at the
  learning rate the probe chose;
- ``r56-tp-groupnorm-450k``: GroupNormPruner at 3g's MACs on 3g's budget (6 sparsity + 39
  fine-tuning epochs of 10,000);
- ``r56-compress-macs-450k``, ``r56-compress-params-450k``: row 3g at 3g's (and 4g's) MACs
  reduction as the target, its Taylor scores ranked per MAC (``--cost macs``) or per param
  (``--cost params``) each group saves instead of by score alone, which kept every residual
  stream channel in 3g;
- ``r56-compress-steps3-450k``: row 3g with its vacl stage pruning in 3 steps
  (``--prune-steps 3 --step-epochs 5``, each step ranked afresh by Taylor importance), the final
  fine-tune shortened so the budget stays 450,000 samples;
- ``r56-compress-params87-450k``: row 3g ranked per param saved (``--cost params``) to 87 %
  fewer params: the ranking that reaches both compress targets (85 % params, 70 % MACs) while
  keeping the most MACs (3g's and 3j's rankings removed 78.6 % and 82.6 % of MACs);
- ``r56-compress-both-450k``: row 3k with the compress target given as it reads,
  ``--target-params-reduction 0.85 --target-macs-reduction 0.7`` (both at once, session 16);
- ``r56-tp-groupnorm-steps3``: row 4g's recipe at 3j's MACs, on the B that 3j started from;
- ``r56-implode-heldout``: row 1c deciding on a validation split B never saw: the layout of
  :func:`heldout_layout` (``RUNS/cifar10-jpeg-heldout``: ``train/`` as it is, ``test/`` halved
  per class into ``val/`` and ``test/``), at most 20 steps. Not in the report's table (half of
  its ``test/`` was its validation split): ``--paired RUNS/r56-B RUNS/r56-implode-heldout
  --data-dir RUNS/cifar10-jpeg-heldout`` compares it with B on the other half;
- ``r56-implode-heldout-r2``: row 1h retraining 20,000 samples a step, at most 10 steps.
- ``r56-implode-heldout-r2-more``: row 1i continued from its output for at most 9 more steps
  with the same acceptance floor (its tolerance is 1i's final val top-1 minus 1i's floor).
- ``r56-B-s1``, ``r56-compress-steps3-450k-s1``: B and row 3j again with ``--seed 1`` (the
  seed of the carved validation split and of every training); 3j's second seed starts from B;
- ``r56-implode-heldout-r2-s1``: row 1i with ``--seed 1`` (on the held-out layout the seed
  changes only the training: the validation split is the folder's ``val/``).
- ``r56-vacl-taylor-100k``, ``r56-vacl-taylor-100k-kd1``: a paired probe of the distillation
  weight on the B the later rows start from: row 2d's options (the 2g recipe file with 10
  fine-tuning epochs: 100,000 samples) at ``--distill-alpha`` 0.7 (the default of every row)
  and 1.0 (the teacher's soft targets alone, no label term).
- ``r56-vacl-taylor-100k-cap06``, ``r56-vacl-taylor-100k-lr005``: the same probe (paired with
  ``r56-vacl-taylor-100k``) with ``--max-layer-reduction 0.6`` (Taylor ranking kept every
  residual-stream channel and took inner widths to 2-9 of 16-64; the cap makes it thin the
  streams too) and with half the fine-tuning learning rate (0.005; 0.05 was much worse, row 2f).
- ``r56-implode-heldout-recal``: row 1i with ``--recalibrate 2048 --retrain needed``: each
  screened candidate and each step's untrained cut scored with BatchNorm statistics
  re-estimated on 2,048 training images; a step whose cut holds val top-1 is accepted without
  retraining; at most 14 steps (310,000 samples at most); ``r56-implode-heldout-recal-s1``:
  the same with ``--seed 1``.
- ``r56-implode-heldout-oneshot-cut``: the implosion target's 12 units in one step: all 25
  erasable units screened with BatchNorm re-estimated, the 12 cheapest cut, then one long
  distilled retraining (32 epochs of 10,000; 330,000 samples in all);
  ``r56-implode-heldout-oneshot-fade``: the same with the 12 units faded out over the first
  half of the retraining (``--erase fade --fade-end 0.5``);
  ``r56-implode-heldout-oneshot-cut-s1``: row 1l with ``--seed 1``.
- ``r56-vacl-taylor-100k-consumers``: the same probe with Taylor scores that also count each
  group's consumer input slices (``--include-consumers``): of the rankings ``resprune vacl B
  --plan --plan-recalibrate 2048`` compared at 79.5 % fewer params, the one whose pruned model
  scored highest after BatchNorm re-estimation (39.2 % against 30.9 % for row 2h's ranking).
- ``r56-vacl-taylor-100k-costparams``, ``r56-vacl-taylor-100k-costmacs``: the same probe
  ranking groups by Taylor score per param / per MAC they save (``--cost params|macs``); row
  2g's ranking (``--cost none``) removes no cross-layer group at 79.5 % fewer params, these
  remove 14 and 19 (``--plan``), keeping 46.7 M and 16.6 M MACs instead of 32.7 M.
- ``r56-vacl-taylor-100k-feat2``, ``r56-vacl-taylor-100k-feat10``: the same probe with feature
  distillation at every residual unit beside the logits' (``--distill-features 2`` / ``10``;
  the relative squared error is about 0.30 right after pruning and 0.21 after row 2h's 100,000
  samples, against a KD loss of about 1.5).
- ``r56-vacl-taylor-100k-lr002``, ``r56-vacl-taylor-100k-t8``: the same probe at fine-tuning
  lr 0.02 (between 2h's 0.01 and row 2f's 0.05) and with distillation temperature 8 instead
  of 4 (softer targets weigh the teacher's ranking of the wrong classes more).
- ``r56-vacl-taylor-100k-mixup02``, ``r56-vacl-taylor-100k-mixup1``: the same probe with
  mixup (``--mixup 0.2`` / ``1.0``), the teacher scoring the very mixed batch the student sees.
- ``r56-compress-oneshot``, ``r56-compress-oneshot-r2``: compress depth first: row 1l's
  one-step implosion (12 units screened and cut at once) as the implode stage, then row 3j's
  vacl stage and final fine-tune, 450,000 samples; the cut healed 100,000 samples (3m) or
  20,000 with a longer final fine-tune (3n; its options as a file:
  ``configs/cifar10-jpeg/resnet56-compress-depthfirst.yaml``);
  ``r56-tp-groupnorm-oneshot``: row 4j's recipe at 3m's MACs; ``r56-compress-oneshot-r2-s1``:
  row 3n with ``--seed 1`` (its carved validation split and every training; same B).
- ``r56-compress-perparam``, ``r56-compress-perparam-k6``: row 3n with the screen ranking each
  unit's validation-loss rise per param it frees (``--screen-cost params``), so the depth stage
  takes the big stage-3 units, cutting 12 (3o; its ``--target-macs-reduction 0.7`` replaced
  the file's params target, so its vacl stage aimed at MACs alone) or 6 (3p, both targets);
  ``-s1``: the same with ``--seed 1``; ``r56-tp-groupnorm-perparam``,
  ``r56-tp-groupnorm-perparam-k6``: row 4j's recipe at 3o's / 3p's MACs.
- ``r56-compress-rounds3``: row 3n with its depth stage choosing the 12 units in 3 rounds of
  4 (``--screen-rounds 3``), each round screened with the earlier rounds' units cut.
- ``r56-vacl-steps3-450k``: row 2g (VACL to 79.5 % fewer params) pruning in 3 steps, each
  ranked afresh by Taylor importance, as row 3j does for compress (5 fine-tuning epochs after
  each of the first two steps, 35 after the last: 450,000 samples).
- ``r20-imported``, ``r20-B``, ``r20-kd-450k``: the capacity reference: akamaster's converged
  ResNet-20 (68.4 % fewer params than ResNet-56) imported, adapted to JPEG as B was, then
  distilled from B on a pruning row's 450,000 samples (row 2g's schedule and teacher).
- ``r56-compress-oneshot-k18``: row 3n cutting 18 of the 27 units instead of 12 (64 % of the
  layers), so the width stage prunes less of what is left.
- ``r56-vacl-r20size-450k``: row 2g (VACL, Taylor, 450,000 samples) to ResNet-20's size, so
  the pruned ResNet-56 and the distilled ResNet-20 compare at equal size and budget.
- ``r56-vacl-reconstruct-450k``, ``r56-compress-oneshot-r2-reconstruct``: rows 2g and 3n with
  the layers left after each pruning step re-fitted by least squares to B's outputs on 1,024
  training images before fine-tuning (``--reconstruct 1024``); ``r56-vacl-short-10k``,
  ``-30k`` and their ``-reconstruct`` twins: row 2g's pruning fine-tuned 10,000 or 30,000
  samples only, without and with the re-fit.
- ``gpu-r56-compress-oneshot-r2``: row 3n's command on CUDA (``--device cuda``);
  ``gpu-r56-compress-oneshot-r2-full`` (and ``-s1``, ``--seed 1``), ``gpu-r56-vacl-450k-full``
  and ``gpu-r56-tp-groupnorm-oneshot-r2-full``: rows 3n, 2g and 4m's recipe at 3n's MACs with
  every epoch a whole pass over the 45,000 training images (``--epoch-size 45000``:
  2,025,000 samples); ``gpu-r56-vacl-450k-full-s1``: G2g-full with ``--seed 1``;
  ``r56-vacl-taylor-450k-s1``: row 2g with ``--seed 1`` (450,000 samples, CPU);
  ``r56-vacl-taylor-450k-at``: row 2g with attention transfer from B
  (``--distill-attention 1000``, the weight of Zagoruyko & Komodakis 2017).
  ``r56-vacl-taylor-450k-feat10``: row 2g with feature distillation at every residual unit
  (``--distill-features 10``, probe 2w's weight).
  ``r56-vacl-450k-p50``: row 2g's recipe (``resnet56-vacl-450k.yaml``) to half of B's params
  instead of 79.5 %: how much VACL removes without loss on the issue's budget.
  ``benchmarks/gpu_rows.sh`` runs them at once on a lent GPU; one stopped there resumes here
  with ``--run ROW --device cpu``.

``--run ROW [ROW ...]`` runs rows one after another (skipping finished ones, resuming started
ones) with ``--threads`` torch threads (1: rows beside other work; 2: one row alone on the
2-core machine, 4x the throughput); ``--report`` (the default without ``--run``) measures
every finished row (or the ``--rows`` given) and writes
``benchmarks/results/cifar10_jpeg_resnet56.md`` (+ a plot):

- test top-1 on ``test/`` (5,000 images) and its paired difference to B with the standard
  error of the per-image difference; val top-1; top-1 right after pruning (before any
  fine-tuning); samples trained (epochs x ``--epoch-size``); training CPU minutes;
- CPU speed-up over B at batch 1 and 64, eager and onnxruntime, all models timed interleaved
  in one process (``resprune.measure.compare.time_models``), priority gates folded.

    .venv/bin/python benchmarks/cifar10_jpeg_resnet56.py --runs runs --run r56-compress
    .venv/bin/python benchmarks/cifar10_jpeg_resnet56.py --runs runs
    .venv/bin/python benchmarks/cifar10_jpeg_resnet56.py --runs runs \
        --rows r56-B r56-vacl-taylor-450k --out benchmarks/results/cifar10_jpeg_resnet56_450k.md
    .venv/bin/python benchmarks/cifar10_jpeg_resnet56.py --paired runs/r56-B runs/r56-vacl
    .venv/bin/python benchmarks/cifar10_jpeg_resnet56.py --heldout runs/cifar10-jpeg-heldout
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, correct, deployed, machine_info, md_table  # noqa: E402

AKAMASTER = "../shared/pretrained/akamaster-cifar10/resnet56-4bfd9763.th"
AKAMASTER20 = "../shared/pretrained/akamaster-cifar10/resnet20-12fca82f.th"
JPEG = REPO.parent / "shared/datasets/cifar10-jpeg"
DATA = ["--data", "imagefolder", "--data-dir", "../shared/datasets/cifar10-jpeg"]
HELDOUT = "cifar10-jpeg-heldout"  # under --runs: see heldout_layout
CFG = "configs/cifar10-jpeg"
FIRST = "62967bd"  # the commit whose configs the first attempt's rows used
# the recovery learning rate of the 450,000-sample rows: the r56-vacl-taylor-lr05 probe (row 2d
# at lr 0.05, 100,000 samples) ended at 82.22 % val against row 2d's 86.08 % at lr 0.01
LR_450K = "0.01"
# 3g's measured MACs reduction (its summary.json), the target of 4g (via TP_MATCH) and of the
# --cost rows, so all four compare at equal MACs and budget
MACS_3G = "0.7858361800854179"
# row 3k's params target: ranked per param saved (--cost params), B pruned in one step to 85 %
# fewer params keeps 32.1 % of its MACs (67.9 % removed, short of the compress target's 70 %);
# to 87 %: 72.5 % of MACs removed (`resprune vacl RUNS/r56-B --plan --group-score taylor
# --target-params-reduction R`, its --cost params row)
PARAMS_3K = "0.87"
# ResNet-20's size as reductions of ResNet-56's (params 269,722 of 853,018; MACs 40,551,040 of
# 125,485,696): the targets of the pruning row compared with the ResNet-20 reference
R20_PARAMS = "0.6838"
R20_MACS = "0.6768"
# images the pruned layers are re-fitted on (--reconstruct) in the session-25 rows
RECONSTRUCT = "1024"
GPU = ["--device", "cuda"]
FULL = ["--epoch-size", "45000"]  # a whole pass over the training split (50,000 - val 5,000)
MACS_3N = "0.8533"  # CPU row 3n's MACs reduction (85.33 %), the GPU torch-pruning row's target
# the one-step implosion rows (1l, 1m): retraining epochs of 10,000 after the 12-unit cut
ONESHOT_EPOCHS = 32


def with_value(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with the value that follows ``flag`` replaced by ``value``."""
    return [value if prev == flag else a for prev, a in zip(["", *argv], argv)]


def one_unit(b: str, retrain_epochs: int, max_steps: int,
             data_dir: Path | None = None, screen: int = 8) -> list[str]:
    """The one-unit-a-step implosion recipe (row 1c): each unit faded out over a retraining
    of ``retrain_epochs`` x 10,000 samples, ``screen`` candidates screened, patience 3."""
    return ["resprune", "implode", b, "--config", f"{CFG}/resnet56-implode.yaml", "--per-step",
            "1", "--epoch-size", "10000", "--retrain-epochs", str(retrain_epochs),
            "--retrain-lr", "0.01", "--screen", str(screen), "--screen-batches", "6",
            "--patience", "3",
            "--max-steps", str(max_steps), "--final-epochs", "2",
            *(["--data-dir", str(data_dir)] if data_dir else [])]


def commands(runs: Path) -> dict[str, list[str]]:
    """Each row's command (run from the repository root), ``--out`` last."""
    b = str(runs / "r56-B")
    # row 3g with its vacl stage in 3 steps (--prune-steps): 3 implode + 5 + 5 between the
    # steps + 3 + 29 final fine-tuning epochs of 10,000 = 3g's 450,000 samples
    steps3 = ["resprune", "compress", b, "--config", f"{CFG}/resnet56-compress.yaml",
              "--group-score", "taylor", "--fade", "off", "--sparse-epochs", "0",
              "--prune-steps", "3", "--step-epochs", "5", "--finetune-epochs", "3",
              "--finetune-lr", LR_450K, "--finetune-final-epochs", "29", "--finetune-final-lr",
              LR_450K]
    rows = {
        "r56-imported": ["resprune", "import", AKAMASTER, "--model", "resnet56", *DATA],
        "r56-B": ["resprune", "train", "--init", str(runs / "r56-imported"), "--config",
                  f"{CFG}/resnet56-adapt.yaml"],
        "r56-implode-fade": ["resprune", "implode", b, "--config",
                             f"{CFG}/resnet56-implode.yaml"],
        "r56-vacl-fade": ["resprune", "vacl", b, "--config", f"{CFG}/resnet56-vacl.yaml"],
        "r56-vacl50-fade": ["resprune", "vacl", b, "--config", f"{CFG}/resnet56-vacl.yaml",
                            "--target-params-reduction", "0.5", "--sparse-epochs", "4",
                            "--finetune-epochs", "5"],
        "r56-vacl-cap60": ["resprune", "vacl", b, "--config", f"{CFG}/resnet56-vacl.yaml",
                           "--max-layer-reduction", "0.6"],
        "r56-compress-fade": ["resprune", "compress", b, "--config",
                              f"{CFG}/resnet56-compress.yaml"],
        "r56-implode": ["resprune", "implode", b, "--config",
                        f"<git show {FIRST}:{CFG}/resnet56-implode.yaml>"],
        "r56-vacl": ["resprune", "vacl", b, "--config",
                     f"<git show {FIRST}:{CFG}/resnet56-vacl.yaml>"],
        "r56-compress": ["resprune", "compress", b, "--config",
                         f"<git show {FIRST}:{CFG}/resnet56-compress.yaml>"],
        "r56-tp-groupnorm": ["python", "benchmarks/_tp_baselines.py", b, "--method",
                             "groupnorm", "--metric", "macs", "--params-reduction",
                             "<compress's MACs reduction>", "--sparse-epochs", "3",
                             "--finetune-epochs", "9", "--epoch-size", "10000",
                             "--distill-alpha", "0.7", "--distill-temperature", "4"],
        # row 5: row 3d's recipe (the most accurate compress row) without a teacher
        "r56-compress-nodistill": ["resprune", "compress", b, "--config",
                                   f"{CFG}/resnet56-compress.yaml", "--group-score", "taylor",
                                   "--fade", "off", "--sparse-epochs", "0",
                                   "--finetune-epochs", "3", "--finetune-final-epochs", "8",
                                   "--distill-from", "none"],
        "r56-compress-cap65": ["resprune", "compress", b, "--config",
                               f"{CFG}/resnet56-compress.yaml", "--max-layer-reduction", "0.65"],
        # MACs target: a dry run of 3c's VACL stage on B (84.53 %; cap 0.6 reaches only 83.2 %
        # of params, so 3c uses 0.65); 3c's budget: 6 + 12 epochs of 10,000 = 180,000 samples
        "r56-tp-groupnorm-cap": ["python", "benchmarks/_tp_baselines.py", b, "--method",
                                 "groupnorm", "--metric", "macs", "--params-reduction", "0.8453",
                                 "--sparse-epochs", "6", "--finetune-epochs", "12",
                                 "--epoch-size", "10000", "--distill-alpha", "0.7",
                                 "--distill-temperature", "4"],
        "r56-implode-p1-lr0.01": one_unit(b, retrain_epochs=1, max_steps=16),
        "r56-vacl-taylor": ["resprune", "vacl", b, "--config", f"{CFG}/resnet56-vacl.yaml",
                            "--group-score", "taylor", "--fade", "off", "--sparse-epochs", "0",
                            "--finetune-epochs", "10"],
        "r56-vacl-taylor-150k": ["resprune", "vacl", b, "--config", f"{CFG}/resnet56-vacl.yaml",
                                 "--group-score", "taylor", "--fade", "off", "--sparse-epochs",
                                 "0", "--finetune-epochs", "15"],
        "r56-compress-taylor": ["resprune", "compress", b, "--config",
                                f"{CFG}/resnet56-compress.yaml", "--group-score", "taylor",
                                "--fade", "off", "--sparse-epochs", "0", "--finetune-epochs",
                                "3", "--finetune-final-epochs", "8"],
        "r56-compress-taylor-260k": ["resprune", "compress", b, "--config",
                                     f"{CFG}/resnet56-compress.yaml", "--group-score",
                                     "taylor", "--fade", "off", "--sparse-epochs", "0",
                                     "--finetune-epochs", "3", "--finetune-final-epochs", "20"],
        # row 4 on 3g's budget: 6 sparsity + 39 fine-tuning epochs of 10,000 = 450,000 samples
        "r56-tp-groupnorm-450k": ["python", "benchmarks/_tp_baselines.py", b, "--method",
                                  "groupnorm", "--metric", "macs", "--params-reduction",
                                  "<3g's MACs reduction>", "--sparse-epochs", "6",
                                  "--finetune-epochs", "39", "--epoch-size", "10000",
                                  "--distill-alpha", "0.7", "--distill-temperature", "4"],
        "r56-vacl-taylor-lr05": ["resprune", "vacl", b, "--config", f"{CFG}/resnet56-vacl.yaml",
                                 "--group-score", "taylor", "--fade", "off", "--sparse-epochs",
                                 "0", "--finetune-epochs", "10", "--finetune-lr", "0.05"],
        "r56-vacl-taylor-450k": ["resprune", "vacl", b, "--config", f"{CFG}/resnet56-vacl.yaml",
                                 "--group-score", "taylor", "--fade", "off", "--sparse-epochs",
                                 "0", "--finetune-epochs", "45", "--finetune-lr", LR_450K],
        "r56-compress-taylor-450k": ["resprune", "compress", b, "--config",
                                     f"{CFG}/resnet56-compress.yaml", "--group-score",
                                     "taylor", "--fade", "off", "--sparse-epochs", "0",
                                     "--finetune-epochs", "3", "--finetune-lr", LR_450K,
                                     "--finetune-final-epochs", "39", "--finetune-final-lr",
                                     LR_450K],
        **{f"r56-compress-{cost}-450k": [
            "resprune", "compress", b, "--config", f"{CFG}/resnet56-compress.yaml",
            "--target-macs-reduction", MACS_3G, "--cost", cost, "--group-score", "taylor",
            "--fade", "off", "--sparse-epochs", "0", "--finetune-epochs", "3", "--finetune-lr",
            LR_450K, "--finetune-final-epochs", "39", "--finetune-final-lr", LR_450K]
            for cost in ("macs", "params")},
        "r56-compress-steps3-450k": steps3,
        # row 3g ranked per param saved, to the params reduction at which that ranking also
        # passes the 70 % MACs target (0.85 gave 67.9 % MACs, 0.87 gave 72.5 % in a dry run of
        # the ranking on B: PARAMS_3K); 3g's ranking overshot MACs (78.6 % at 85.1 % params)
        "r56-compress-params87-450k": [
            "resprune", "compress", b, "--config", f"{CFG}/resnet56-compress.yaml",
            "--target-params-reduction", PARAMS_3K, "--cost", "params", "--group-score",
            "taylor", "--fade", "off", "--sparse-epochs", "0", "--finetune-epochs", "3",
            "--finetune-lr", LR_450K, "--finetune-final-epochs", "39", "--finetune-final-lr",
            LR_450K],
        # row 3k with the compress target stated as it reads: both size targets at once
        # (session 16); ranked per param saved, the plan on B stops at 86.24 % / 70.04 %
        "r56-compress-both-450k": [
            "resprune", "compress", b, "--config", f"{CFG}/resnet56-compress.yaml",
            "--target-params-reduction", "0.85", "--target-macs-reduction", "0.7", "--cost",
            "params", "--group-score", "taylor", "--fade", "off", "--sparse-epochs", "0",
            "--finetune-epochs", "3", "--finetune-lr", LR_450K, "--finetune-final-epochs",
            "39", "--finetune-final-lr", LR_450K],
        # second seeds (the "when time allows"): --seed is the seed of the carved
        # validation split and of every training, so both change with it
        "r56-B-s1": ["resprune", "train", "--init", str(runs / "r56-imported"), "--config",
                     f"{CFG}/resnet56-adapt.yaml", "--seed", "1"],
        "r56-compress-steps3-450k-s1": [*steps3, "--seed", "1"],
        # session 23: row 2g pruning in 3 steps as row 3j does (5 fine-tuning epochs after
        # each of the first two, 35 after the last: 2g's 45 epochs of 10,000)
        "r56-vacl-steps3-450k": ["resprune", "vacl", b, "--config",
                                 f"{CFG}/resnet56-vacl-450k.yaml", "--prune-steps", "3",
                                 "--step-epochs", "5", "--finetune-epochs", "35"],
        "r56-implode-heldout-r2-s1": [*one_unit(b, retrain_epochs=2, max_steps=10,
                                                data_dir=runs / HELDOUT), "--seed", "1"],
        # the distillation-weight probe: row 2d's options (100,000 samples) on this B, at the
        # alpha of every row and with the teacher's soft targets alone
        **{f"r56-vacl-taylor-100k{tag}": ["resprune", "vacl", b, "--config",
                                           f"{CFG}/resnet56-vacl-450k.yaml", "--finetune-epochs",
                                           "10", *extra]
           for tag, extra in (("", []), ("-kd1", ["--distill-alpha", "1.0"]),
                              # session 18: two more levers on the same probe, paired
                              # with 2h: a per-layer cap that makes the ranking thin the
                              # residual streams too, and half the fine-tuning lr
                              ("-cap06", ["--max-layer-reduction", "0.6"]),
                              ("-lr005", ["--finetune-lr", "0.005"]),
                              # then the ranking --plan-recalibrate scored highest at 79.5 %
                              # (Taylor scores that also count the consumers' input slices)
                              ("-consumers", ["--include-consumers"]),
                              # session 29: the ranking per param / per MAC saved (the
                              # Taylor ranking alone removes no cross-layer group: --plan)
                              ("-costparams", ["--cost", "params"]),
                              ("-costmacs", ["--cost", "macs"]),
                              # session 29: feature distillation at every residual unit
                              # (row 2g's ranking keeps every stream channel)
                              ("-feat2", ["--distill-features", "2"]),
                              ("-feat10", ["--distill-features", "10"]),
                              # session 30: the fine-tuning lr between 0.01 (2h) and the
                              # 0.05 of row 2f, and softer teacher targets
                              ("-lr002", ["--finetune-lr", "0.02"]),
                              ("-t8", ["--distill-temperature", "8"]),
                              # session 30: mixup, the teacher scoring the mixed batch
                              # (consistent "function matching" on images it never saw)
                              ("-mixup02", ["--mixup", "0.2"]),
                              ("-mixup1", ["--mixup", "1.0"]))},
        # row 4g's recipe at 3j's MACs, on the same B as 3j (pairs them)
        "r56-tp-groupnorm-steps3": ["python", "benchmarks/_tp_baselines.py", b, "--method",
                                    "groupnorm", "--metric", "macs", "--params-reduction",
                                    "<3j's MACs reduction>", "--sparse-epochs", "6",
                                    "--finetune-epochs", "39", "--epoch-size", "10000",
                                    "--distill-alpha", "0.7", "--distill-temperature", "4"],
        # row 1c's recipe deciding on images B never saw (half of test/), up to 20 steps
        "r56-implode-heldout": one_unit(b, retrain_epochs=1, max_steps=20,
                                        data_dir=runs / HELDOUT),
        # row 1h with twice the retraining per step (20,000 samples), at most 10 steps
        "r56-implode-heldout-r2": one_unit(b, retrain_epochs=2, max_steps=10,
                                           data_dir=runs / HELDOUT),
        # row 1i stopped at its 10-step cap within tolerance: 9 more steps from its output, to
        # the same floor (1i's start val top-1 - 0.5; "<...>" filled in by run_row), B as the
        # teacher, no gate adaptation (its gates were folded: all 21 units screened instead),
        # another seed for fresh retraining subsets; 230,000 + 200,000 samples in all
        "r56-implode-heldout-r2-more": [
            *one_unit(str(runs / "r56-implode-heldout-r2"), retrain_epochs=2, max_steps=9,
                      data_dir=runs / HELDOUT, screen=21),
            "--adapt-epochs", "0", "--tolerance", "<to 1i's floor>",
            "--distill-from", b, "--seed", "1"],
        # row 1i with BatchNorm re-estimated (2,048 training images) before every evaluation
        # of an untrained cut: the screen ranks candidates by what a cut really costs, and a
        # step whose re-estimated cut holds val top-1 is accepted without retraining
        # (--retrain needed); at most 14 steps: 10,000 + 14 x 20,000 + 20,000 = 310,000 samples
        "r56-implode-heldout-recal": [
            *one_unit(b, retrain_epochs=2, max_steps=14, data_dir=runs / HELDOUT),
            "--recalibrate", "2048", "--retrain", "needed"],
        # and its second seed (on the held-out layout only the training changes with it)
        "r56-implode-heldout-recal-s1": [
            *one_unit(b, retrain_epochs=2, max_steps=14, data_dir=runs / HELDOUT),
            "--recalibrate", "2048", "--retrain", "needed", "--seed", "1"],
        # session 20: the target's 12 units in ONE step, then one long retraining instead of a
        # short one per unit (1h-1k spent 0.2-0.4 points of the tolerance on every step): all
        # 25 erasable units screened with BatchNorm re-estimated, the 12 cheapest cut (1l) or
        # faded out over the first half of the retraining (1m); 10,000 adapt + 32 x 10,000
        # retraining samples = 330,000 samples
        **{f"r56-implode-heldout-oneshot-{erase}": [
            "resprune", "implode", b, "--config", f"{CFG}/resnet56-implode.yaml",
            "--per-step", "12", "--max-steps", "1", "--screen", "25", "--screen-batches", "6",
            "--recalibrate", "2048", "--erase", erase,
            *(["--fade-end", "0.5"] if erase == "fade" else []),
            "--epoch-size", "10000", "--retrain-epochs", str(ONESHOT_EPOCHS), "--retrain-lr",
            "0.01", "--final-epochs", "0", "--data-dir", str(runs / HELDOUT)]
           for erase in ("cut", "fade")},
    }
    rows["r56-implode-heldout-oneshot-cut-s1"] = [*rows["r56-implode-heldout-oneshot-cut"],
                                                  "--seed", "1"]
    # session 21: compress with row 1l's one-step implosion as its implode stage (12 units
    # screened with BatchNorm re-estimated and cut, then one retraining), then
    # row 3j's vacl stage (Taylor, 3 pruning steps) and final fine-tune, the later stages
    # retraining the net anyway. 3m: 1 adapt + 10 retraining + 10 between the pruning steps
    # + 3 + 21 final epochs of 10,000 = 450,000 samples; the step is kept within 3 val points
    # of B (--tolerance 3). 3n: the cut retrained 2 epochs, the final fine-tune 29, the step
    # kept whatever its val top-1 (--tolerance 100; with 3 it was rolled back at 91.14 %
    # against B's 94.52 % on the carved val split, which B's import has partly memorized)
    for tag, cut_epochs, final_epochs, tol in (("", 10, 21, "3"), ("-r2", 2, 29, "100")):
        rows[f"r56-compress-oneshot{tag}"] = [
            *steps3[:-3], str(final_epochs), "--finetune-final-lr", LR_450K,
            "--erase", "cut", "--per-step", "12", "--max-steps", "1", "--screen", "25",
            "--screen-batches", "6", "--recalibrate", "2048", "--retrain-epochs",
            str(cut_epochs), "--retrain-lr", "0.01", "--tolerance", tol]
    rows["r56-compress-oneshot-r2-s1"] = [*rows["r56-compress-oneshot-r2"], "--seed", "1"]
    # session 23: row 3n choosing its 12 units in 3 rounds of 4, each screened with the
    # earlier rounds' units cut (benchmarks/results/implosion_screen_rounds.md: on B the
    # joint cut keeps 63.4 % val instead of 59.2 % and frees 40.7 % of params, not 16.3 %)
    rows["r56-compress-rounds3"] = [*rows["r56-compress-oneshot-r2"], "--screen-rounds", "3"]
    # session 22: row 3n with the screen ranking each unit's loss rise per param it frees
    # (--screen-cost params), so the depth stage takes params, not only MACs: on B the
    # stage-3 units (8.7 % of the params each) rank first. 3o: 3n's 12 units; 3p: 6 units,
    # leaving MACs nearer the target's 70 %. 3o gave --target-macs-reduction 0.7 alone, which
    # REPLACED the file's params target (a command-line budget replaces the file's, as
    # documented), so its vacl stage aimed at MACs only; 3p gives both targets
    for tag, units, budget in (
            ("", "12", ["--target-macs-reduction", "0.7"]),
            ("-k6", "6", ["--target-params-reduction", "0.85", "--target-macs-reduction",
                          "0.7"])):
        rows[f"r56-compress-perparam{tag}"] = [
            *with_value(rows["r56-compress-oneshot-r2"], "--per-step", units),
            "--screen-cost", "params", *budget]
        rows[f"r56-compress-perparam{tag}-s1"] = [*rows[f"r56-compress-perparam{tag}"],
                                                  "--seed", "1"]
    # session 24: row 3n cutting 18 units instead of 12 (64 % of the layers; 3 of 9 units left
    # per stage would be ResNet-20's depth): row r20-kd-450k showed a 20-layer net distilled
    # from B on 450,000 samples matching B, and the cut heals fast where width pruning does
    # not, so more of the 85 % is taken by depth and the width stage prunes less
    rows["r56-compress-oneshot-k18"] = with_value(rows["r56-compress-oneshot-r2"], "--per-step",
                                                  "18")
    # row 4j's recipe at 3m's (3o's, 3p's) MACs, on the same B (pairs them)
    for tp, row in (("oneshot", "3m"), ("perparam", "3o"), ("perparam-k6", "3p")):
        rows[f"r56-tp-groupnorm-{tp}"] = [
            f"<{row}'s MACs reduction>" if a.startswith("<") else a
            for a in rows["r56-tp-groupnorm-steps3"]]
    # session 24: the capacity reference. akamaster's converged ResNet-20 (68.4 % fewer params
    # than ResNet-56, trained as long as B's import) adapted to JPEG exactly as B was (r20-B),
    # then distilled from B on a pruning row's budget (r20-kd-450k: 45 epochs of 10,000,
    # lr 0.01, alpha 0.7, T 4, as row 2g): how close a fully trained smaller net comes to B
    rows["r20-imported"] = ["resprune", "import", AKAMASTER20, "--model", "resnet20", *DATA]
    rows["r20-B"] = ["resprune", "train", "--init", str(runs / "r20-imported"), "--config",
                     f"{CFG}/resnet56-adapt.yaml"]
    rows["r20-kd-450k"] = ["resprune", "train", "--init", str(runs / "r20-B"), "--config",
                           f"{CFG}/resnet56-adapt.yaml", "--epochs", "45", "--epoch-size",
                           "10000", "--lr", LR_450K, "--distill-from", b, "--distill-alpha",
                           "0.7", "--distill-temperature", "4"]
    # and B pruned by VACL (row 2g's recipe) to at least ResNet-20's size (both its params and
    # its MACs reduction: 1 - 269,722 / 853,018 and 1 - 40.55 M / 125.49 M): pruning B or
    # distilling the smaller trained sibling, at equal size and budget
    rows["r56-vacl-r20size-450k"] = ["resprune", "vacl", b, "--config",
                                     f"{CFG}/resnet56-vacl-450k.yaml",
                                     "--target-params-reduction", R20_PARAMS,
                                     "--target-macs-reduction", R20_MACS]
    # session 25: the pruned layers re-fitted by least squares to B's outputs on 1,024
    # training images before fine-tuning (--reconstruct; 18 % -> 73 % val top-1 right after
    # row 2n's pruning with 512): row 2g (VACL to 79.5 % of params) and row 3n (compress,
    # depth first; re-fitted after each of its 3 width steps), everything else unchanged.
    # Row 3s ran at 916acd2, where compress passed --reconstruct to its vacl stage only; from
    # 10de7a2 on the same command also re-fits the implode stage's cut
    rows["r56-vacl-reconstruct-450k"] = ["resprune", "vacl", b, "--config",
                                         f"{CFG}/resnet56-vacl-450k.yaml", "--reconstruct",
                                         RECONSTRUCT]
    rows["r56-compress-oneshot-r2-reconstruct"] = [*rows["r56-compress-oneshot-r2"],
                                                   "--reconstruct", RECONSTRUCT]
    # and on short budgets, where the start matters most: row 2g's pruning fine-tuned 1 or 3
    # epochs of 10,000 (10,000 / 30,000 samples), without and with the re-fit
    for epochs in ("1", "3"):
        short = [*rows["r56-vacl-reconstruct-450k"][:-2], "--finetune-epochs", epochs]
        rows[f"r56-vacl-short-{epochs}0k"] = short
        rows[f"r56-vacl-short-{epochs}0k-reconstruct"] = [*short, "--reconstruct", RECONSTRUCT]
    # session 26, an H200 lent (benchmarks/gpu_rows.sh runs these on it, five at a time):
    # row 3n exactly as on the CPU but on CUDA; then rows 3n (two seeds), 2g and 4n (row 4m's
    # recipe at 3n's MACs) on the full budget, every one of their 45 epochs a whole pass over
    # the 45,000 training images instead of 10,000 of them (2,025,000 samples, 4.5x the CPU
    # budget). 4n's target is CPU row 3n's MACs reduction (85.33 %): the GPU rows run at once
    rows["gpu-r56-compress-oneshot-r2"] = [*rows["r56-compress-oneshot-r2"], *GPU]
    rows["gpu-r56-compress-oneshot-r2-full"] = [*rows["r56-compress-oneshot-r2"], *GPU, *FULL]
    rows["gpu-r56-compress-oneshot-r2-full-s1"] = [*rows["gpu-r56-compress-oneshot-r2-full"],
                                                   "--seed", "1"]
    rows["gpu-r56-vacl-450k-full"] = ["resprune", "vacl", b, "--config",
                                      f"{CFG}/resnet56-vacl-450k.yaml", *GPU, *FULL]
    rows["gpu-r56-tp-groupnorm-oneshot-r2-full"] = [
        *with_value(with_value(rows["r56-tp-groupnorm-steps3"], "--params-reduction",
                               MACS_3N), "--epoch-size", FULL[1]), *GPU]
    # session 27: G2g-full's second seed, for the next GPU
    rows["gpu-r56-vacl-450k-full-s1"] = [*rows["gpu-r56-vacl-450k-full"], "--seed", "1"]
    # session 28: row 2g's second seed on the budget (450,000 samples, CPU)
    rows["r56-vacl-taylor-450k-s1"] = [*rows["r56-vacl-taylor-450k"], "--seed", "1"]
    # session 28: row 2g with attention transfer from B beside the logits' distillation
    rows["r56-vacl-taylor-450k-at"] = [*rows["r56-vacl-taylor-450k"],
                                       "--distill-attention", "1000"]
    # session 29: row 2g with feature distillation at every residual unit (probe 2w's beta)
    rows["r56-vacl-taylor-450k-feat10"] = [*rows["r56-vacl-taylor-450k"],
                                           "--distill-features", "10"]
    # session 30: how much VACL removes without loss on the budget: row 2g's recipe
    # (the file of row 2g) to half of B's params instead of 79.5 %
    rows["r56-vacl-450k-p50"] = ["resprune", "vacl", b, "--config",
                                 f"{CFG}/resnet56-vacl-450k.yaml",
                                 "--target-params-reduction", "0.5"]
    return rows


TITLES = {
    "r56-imported": "imported (akamaster, lossless-trained)",
    "r56-B": "B: adapted to JPEG",
    "r56-implode-fade": "1. implosion (fade)",
    "r56-vacl-fade": "2. VACL, 79.5 % params (fade)",
    "r56-vacl50-fade": "2b. VACL, 50 % params (fade)",
    "r56-vacl-cap60": "2c. VACL, 79.5 % params (fade, layer cap 60 %)",
    "r56-compress-fade": "3. compress, depth + width (fade)",
    "r56-implode": "1'. implosion, first attempt (cut)",
    "r56-vacl": "2'. VACL 79.5 %, first attempt (lambda raise)",
    "r56-compress": "3'. compress, first attempt",
    "r56-tp-groupnorm": "4. torch-pruning GroupNormPruner at 3''s MACs",
    "r56-compress-nodistill": "5. compress without distillation (3d's recipe)",
    "r56-compress-cap65": "3c. compress (fade, layer cap 65 %)",
    "r56-tp-groupnorm-cap": "4c. torch-pruning GroupNormPruner at 3c's MACs, 3c's budget",
    "r56-implode-p1-lr0.01": "1c. implosion, one unit a step (fade)",
    "r56-vacl-taylor": "2d. VACL, 79.5 % params, Taylor ranking, no sparsity training",
    "r56-compress-taylor": "3d. compress, Taylor ranking, no sparsity training",
    "r56-vacl-taylor-150k": "2e. row 2d with 150,000 samples",
    "r56-compress-taylor-260k": "3e. row 3d with 260,000 samples",
    "r56-vacl-taylor-lr05": "2f. row 2d at fine-tuning lr 0.05",
    "r56-vacl-taylor-450k": f"2g. row 2d with 450,000 samples, lr {LR_450K}",
    "r56-compress-taylor-450k": f"3g. row 3d with 450,000 samples, lr {LR_450K}",
    "r56-tp-groupnorm-450k": "4g. torch-pruning GroupNormPruner at 3g's MACs, 3g's budget",
    "r56-compress-macs-450k": "3h. row 3g at 3g's MACs, ranked per MAC saved (--cost macs)",
    "r56-compress-params-450k": "3i. row 3g at 3g's MACs, ranked per param saved "
                                "(--cost params)",
    "r56-compress-steps3-450k": "3j. row 3g pruning in 3 steps (--prune-steps 3)",
    "r56-compress-params87-450k": "3k. row 3g ranked per param saved (--cost params) to 87 % "
                                  "params, just past 70 % MACs",
    "r56-compress-both-450k": "3l. row 3k with both size targets given (85 % params and 70 % "
                              "MACs, --cost params)",
    "r56-B-s1": "B, second seed (--seed 1)",
    "r56-compress-steps3-450k-s1": "3j, second seed (--seed 1)",
    "r56-implode-heldout-r2-s1": "1i, second seed (--seed 1)",
    "r56-tp-groupnorm-steps3": "4j. torch-pruning GroupNormPruner at 3j's MACs, 3j's budget",
    "r56-vacl-taylor-100k": "2h. row 2d's options on the B of rows 3j-3l (--distill-alpha 0.7)",
    "r56-vacl-taylor-100k-kd1": "2i. row 2h with --distill-alpha 1.0 (soft targets alone)",
    "r56-vacl-taylor-100k-cap06": "2j. row 2h with --max-layer-reduction 0.6",
    "r56-vacl-taylor-100k-lr005": "2k. row 2h with --finetune-lr 0.005",
    "r56-vacl-taylor-100k-consumers": "2l. row 2h with --include-consumers (the ranking the "
                                      "BN-re-estimated plan scored highest)",
    "r56-vacl-taylor-100k-costparams": "2t. row 2h ranked per param saved (--cost params)",
    "r56-vacl-taylor-100k-costmacs": "2u. row 2h ranked per MAC saved (--cost macs)",
    "r56-vacl-taylor-100k-feat2": "2v. row 2h with feature distillation (--distill-features 2)",
    "r56-vacl-taylor-100k-feat10": "2w. row 2h with feature distillation (--distill-features 10)",
    "r56-vacl-taylor-100k-lr002": "2x. row 2h at fine-tuning lr 0.02",
    "r56-vacl-taylor-100k-t8": "2y. row 2h with distillation temperature 8",
    "r56-vacl-taylor-100k-mixup02": "2z. row 2h with mixup (--mixup 0.2)",
    "r56-vacl-taylor-100k-mixup1": "2z'. row 2h with mixup (--mixup 1.0)",
    "r56-implode-heldout": "1h. row 1c deciding on a held-out val/ (half of test/)",
    "r56-implode-heldout-r2": "1i. row 1h retraining 20,000 samples a step",
    "r56-implode-heldout-r2-more": "1j. row 1i continued 9 steps, to 1i's floor",
    "r56-implode-heldout-recal": "1k. row 1i, BatchNorm re-estimated, retraining when needed",
    "r56-implode-heldout-recal-s1": "1k, second seed (--seed 1)",
    "r56-implode-heldout-oneshot-cut": "1l. 12 units in one step (screened, BatchNorm "
                                       "re-estimated), cut, one 320,000-sample retraining",
    "r56-implode-heldout-oneshot-fade": "1m. row 1l with the 12 units faded out over the "
                                        "first half of the retraining",
    "r56-implode-heldout-oneshot-cut-s1": "1l, second seed (--seed 1)",
    "r56-compress-oneshot": "3m. compress with row 1l's one-step implosion (12 units cut, "
                            "100,000-sample retraining) before row 3j's vacl stage",
    "r56-compress-oneshot-r2": "3n. row 3m with the cut retrained 20,000 samples, the final "
                               "fine-tune 290,000",
    "r56-tp-groupnorm-oneshot": "4m. torch-pruning GroupNormPruner at 3m's MACs, 3m's budget",
    "r56-compress-oneshot-r2-s1": "3n, second seed (--seed 1)",
    "r56-compress-rounds3": "3q. row 3n choosing its 12 units in 3 rounds (--screen-rounds 3)",
    "r56-compress-perparam": "3o. row 3n with the screen ranking loss rise per param freed "
                             "(--screen-cost params), MACs target alone",
    "r56-compress-perparam-k6": "3p. row 3o cutting 6 units instead of 12",
    "r56-vacl-steps3-450k": "2m. row 2g pruning in 3 steps (--prune-steps 3)",
    "r56-compress-perparam-s1": "3o, second seed (--seed 1)",
    "r56-compress-perparam-k6-s1": "3p, second seed (--seed 1)",
    "r56-tp-groupnorm-perparam": "4o. torch-pruning GroupNormPruner at 3o's MACs, 3o's budget",
    "r56-tp-groupnorm-perparam-k6": "4p. torch-pruning GroupNormPruner at 3p's MACs, 3p's "
                                    "budget",
    "r20-imported": "R20. akamaster's ResNet-20, imported (lossless-trained)",
    "r20-B": "R20-B. ResNet-20 adapted to JPEG as B was",
    "r20-kd-450k": "R20-KD. R20-B distilled from B, 450,000 samples (row 2g's schedule)",
    "r56-compress-oneshot-k18": "3r. row 3n cutting 18 units instead of 12",
    "r56-vacl-r20size-450k": "2n. row 2g to ResNet-20's size (68.4 % params, 67.7 % MACs)",
    "r56-vacl-reconstruct-450k": "2o. row 2g with the pruned layers re-fitted to B "
                                 "(--reconstruct 1024)",
    "r56-compress-oneshot-r2-reconstruct": "3s. row 3n with the pruned layers re-fitted "
                                           "after each width step (--reconstruct 1024)",
    "r56-vacl-short-10k": "2p. row 2g's pruning fine-tuned 10,000 samples",
    "r56-vacl-short-10k-reconstruct": "2q. row 2p re-fitted first (--reconstruct 1024)",
    "r56-vacl-short-30k": "2r. row 2g's pruning fine-tuned 30,000 samples",
    "r56-vacl-short-30k-reconstruct": "2s. row 2r re-fitted first (--reconstruct 1024)",
    "gpu-r56-compress-oneshot-r2": "G3n. row 3n on the GPU (450,000 samples)",
    "gpu-r56-compress-oneshot-r2-full": "G3n-full. row 3n, every epoch a full pass (GPU)",
    "gpu-r56-compress-oneshot-r2-full-s1": "G3n-full, second seed (--seed 1)",
    "gpu-r56-vacl-450k-full": "G2g-full. row 2g, every epoch a full pass (GPU)",
    "gpu-r56-vacl-450k-full-s1": "G2g-full, second seed (--seed 1)",
    "r56-vacl-taylor-450k-s1": "2g, second seed (--seed 1)",
    "r56-vacl-taylor-450k-at": "2g with attention transfer (--distill-attention 1000)",
    "r56-vacl-taylor-450k-feat10": "2g with feature distillation (--distill-features 10)",
    "r56-vacl-450k-p50": "2g-50. row 2g to 50 % of params (--target-params-reduction 0.5)",
    "gpu-r56-tp-groupnorm-oneshot-r2-full": "G4n-full. GroupNormPruner at 3n's MACs, "
                                            "G3n-full's budget (GPU)",
}
# where a row trained when not on the CPU alone (its minutes add up every device's seconds):
# the full-budget GPU rows were stopped on the lent H200 at the call's deadline and resumed
# on the CPU (--device cpu)
TRAINED_ON = {"gpu-r56-compress-oneshot-r2": "H200",
              "gpu-r56-compress-oneshot-r2-full": "H200, then CPU",
              "gpu-r56-compress-oneshot-r2-full-s1": "H200, then CPU",
              "gpu-r56-vacl-450k-full": "H200, then CPU"}
# rows that decided on half of test/: compared with B on the other half only (--paired)
ON_HELDOUT = {"r56-implode-heldout", "r56-implode-heldout-r2", "r56-implode-heldout-r2-more",
              "r56-implode-heldout-r2-s1", "r56-implode-heldout-recal",
              "r56-implode-heldout-recal-s1", "r56-implode-heldout-oneshot-cut",
              "r56-implode-heldout-oneshot-fade", "r56-implode-heldout-oneshot-cut-s1"}
# the compress row whose measured MACs reduction a torch-pruning row is matched to
TP_MATCH = {"r56-tp-groupnorm": "r56-compress", "r56-tp-groupnorm-450k": "r56-compress-taylor-450k",
            "r56-tp-groupnorm-steps3": "r56-compress-steps3-450k",
            "r56-tp-groupnorm-oneshot": "r56-compress-oneshot",
            "r56-tp-groupnorm-perparam": "r56-compress-perparam",
            "r56-tp-groupnorm-perparam-k6": "r56-compress-perparam-k6"}


def _macs_reduction(s: dict[str, Any]) -> str:
    return str(s["macs_removed_pct"] / 100)


def _same_floor(s: dict[str, Any]) -> str:
    """The tolerance that keeps an implosion row's floor: its final val top-1 - its floor."""
    return f"{100 * s['val_top1'] - (100 * s['start']['val_top1'] - s['config']['tolerance']):.2f}"


# a row whose "<...>" argument is measured on another row: (that row, value from its summary)
DERIVED = {**{tp: (row, _macs_reduction) for tp, row in TP_MATCH.items()},
           "r56-implode-heldout-r2-more": ("r56-implode-heldout-r2", _same_floor)}


def run_row(name: str, runs: Path, threads: int = 1, device: str | None = None) -> int:
    """Run (or resume) one row; ``device``: on this device instead of the one its command
    names (a GPU row stopped on the lent machine resumes on the CPU: the device is one of the
    options a resume may change)."""
    if (runs / name / "summary.json").is_file():
        return 0
    if name in ON_HELDOUT:
        heldout_layout(JPEG, runs / HELDOUT)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.run(row_argv(name, runs, threads, device), cwd=REPO, env=env).returncode


def row_argv(name: str, runs: Path, threads: int = 1, device: str | None = None) -> list[str]:
    """The command line that runs (or, where its directory was started, resumes) one row."""
    out = runs / name
    argv = commands(runs)[name]
    if any(a.startswith("<git show") for a in argv):
        raise SystemExit(f"{name} used the configs of commit {FIRST}: check them out first")
    if name in DERIVED:
        row, value = DERIVED[name]
        s = json.loads((runs / row / "summary.json").read_text())
        argv = [value(s) if a.startswith("<") else a for a in argv]
    if "r56-tp-groupnorm" in name:
        argv = [sys.executable, *argv[1:], "--out", str(out), "--threads", str(threads)]
    else:
        started = out.is_dir() and any(out.iterdir())
        argv = [sys.executable, "-m", "resprune.cli.main", *argv[1:], "--out", str(out),
                "--no-progress", *(["--resume"] if started else [])]
    if device:  # after the row's own --device: the last one given wins
        argv += ["--device", device]
    return argv


def heldout_layout(src: Path, dst: Path, seed: int = 0) -> Path:
    """An image-folder layout whose ``val/`` the models never saw, made of symbolic links.

    ``dst/train`` is ``src/train``; ``src/test`` is halved per class (a seeded stratified
    split, :func:`resprune.data.split.stratified_split`) into ``dst/val`` and ``dst/test``,
    so a command given ``--data-dir dst`` decides on one half and reports on the other.
    Built in a temporary folder and renamed, so it exists whole or not at all.
    """
    import shutil

    import torch

    from resprune.data import imagefolder
    from resprune.data.split import stratified_split

    if (dst / "test").is_dir():
        return dst
    classes = imagefolder.find_classes(src / "test")
    files = imagefolder.scan(src / "test", classes)
    _, val = stratified_split(torch.tensor([y for _, y in files]), 0.5, seed)
    in_val = set(val.tolist())
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "train").symlink_to((src / "train").resolve(), target_is_directory=True)
    for i, (path, y) in enumerate(files):
        d = tmp / ("val" if i in in_val else "test") / classes[y]
        d.mkdir(parents=True, exist_ok=True)
        (d / Path(path).name).symlink_to(Path(path).resolve())
    tmp.rename(dst)
    return dst


# -- report ----------------------------------------------------------------------------------

def samples(s: dict[str, Any]) -> int | None:
    cfg = s.get("config") or {}
    size = cfg.get("epoch_size")
    if size is None:
        return None
    return int(s.get("epochs") or 0) * int(size)


def after_pruning(name: str, run: Path, s: dict[str, Any]) -> float | None:
    """Test top-1 right after the pruning step, before any fine-tuning."""
    if "top1_before_finetune" in s:  # vacl, torch-pruning
        return s["top1_before_finetune"]
    for stage in sorted((run / "stages").glob("*-vacl")):  # compress
        return json.loads((stage / "summary.json").read_text()).get("top1_before_finetune")
    return None


def paired(hits, ref_hits) -> tuple[float, float]:
    """Paired difference of two models' test top-1 (points) and its standard error, from
    their per-image hits (:func:`_common.correct`)."""
    d = hits - ref_hits
    return 100 * float(d.mean()), 100 * float(d.std(unbiased=True)) / math.sqrt(d.numel())


def split_hits(run_dirs: list[Path], data_dir: Path = JPEG, split: str = "test") -> dict[Path, Any]:
    """Per-image hits of each run, as the report evaluates them (the runs as saved), on
    ``data_dir``'s ``split``: ``test``, or ``val``, the validation split carved as the first
    run carved it (its summary's ``val_fraction`` and ``seed``)."""
    import resprune
    from resprune.data import load_dataset, make_loader

    models = {r: resprune.load(r) for r in run_dirs}
    carve = {}
    if split == "val":
        data = json.loads((run_dirs[0] / "summary.json").read_text())["data"]
        carve = {"val_fraction": data["val_fraction"], "seed": data["seed"]}
    bundle = load_dataset("imagefolder", data_dir, preprocess=models[run_dirs[0]].preprocess,
                          progress=False, **carve)
    loader = make_loader(bundle, split, 500, train=False)
    return {r: correct(m, loader) for r, m in models.items()}


def report(runs: Path, out: Path, repeats: int, rows: list[str] | None = None) -> str:
    import torch

    import resprune
    from resprune.data import load_dataset, make_loader
    from resprune.measure.compare import time_models

    torch.set_num_threads(1)
    done = [n for n in (rows or TITLES) if (runs / n / "summary.json").is_file()
            and n not in ON_HELDOUT]
    if "r56-B" not in done:
        raise SystemExit("B (r56-B) is not finished (or not in --rows); nothing to compare")
    summaries = {n: json.loads((runs / n / "summary.json").read_text()) for n in done}
    b_model = resprune.load(runs / "r56-B")
    bundle = load_dataset("imagefolder", JPEG, preprocess=b_model.preprocess, progress=False)
    test = make_loader(bundle, "test", 500, train=False)
    models, hits = {}, {}
    for n in done:
        m, shape = deployed(runs / n)
        models[n] = m
        hits[n] = correct(m, test)
    rows_t, _ = time_models(models, shape, batch_sizes=(1, 64), devices=["cpu"], warmup=3,
                            repeats=repeats)
    speed = {}
    for r in rows_t:
        for n, ms in r["ms"].items():
            speed[(n, r["runtime"], r["batch"])] = r["ms"]["r56-B"] / ms
    base = summaries["r56-B"]
    body = []
    for n in done:
        s = summaries[n]
        mean, se = paired(hits[n], hits["r56-B"])
        diff = "" if n == "r56-B" else f" ({mean:+.2f} ± {se:.2f})"
        ap = after_pruning(n, runs / n, s)
        def removed(key: str, s=s) -> str:
            return f"{100 * (1 - s[key] / base[key]):.1f} %"

        body.append([
            TITLES[n], f"{s['params'] / 1e3:.1f} k ({removed('params')})",
            f"{s['macs'] / 1e6:.1f} M ({removed('macs')})", f"{s['depth']} ({removed('depth')})",
            f"{100 * float(hits[n].mean()):.2f}{diff}",
            f"{100 * s['val_top1']:.2f}" if s.get("val_top1") is not None else "-",
            f"{100 * ap:.2f}" if ap is not None else "-",
            f"{samples(s):,}" if samples(s) is not None else "-",
            f"{(s.get('seconds') or 0) / 60:.1f}"
            + (f" ({TRAINED_ON[n]})" if n in TRAINED_ON else ""),
            *[f"{speed[(n, rt, bs)]:.2f}x" for rt in ("eager", "onnxruntime") for bs in (1, 64)],
        ])
    head = ["row", "params (removed)", "MACs (removed)", "depth (removed)",
            "test top-1 % (paired diff to B ± SE)", "val top-1 %", "top-1 right after pruning %",
            "samples trained", "training min (CPU unless said)", "eager b1", "eager b64",
            "ORT b1", "ORT b64"]
    plot = out.with_name(out.stem + "_pareto.png")
    _plot(plot, {n: (summaries[n]["macs"] / 1e6, 100 * float(hits[n].mean())) for n in done})
    cmds = commands(runs)
    lines = [
        "# Converged ResNet-56 on real CIFAR-10 images (cifar10-jpeg)\n",
        "Report: `.venv/bin/python benchmarks/cifar10_jpeg_resnet56.py --runs "
        f"{runs}{' --rows ' + ' '.join(rows) if rows else ''}`  ",
        f"Machine: {machine_info(1)}.\n",
        md_table(head, body),
        "Speed-ups are B's median latency over the row's, one torch thread, all models timed "
        "interleaved in one process (onnxruntime: the exported, parity-checked graph).\n",
        f"![test top-1 against MACs]({plot.name})\n",
        "## Commands (from the repository root)\n",
    ]
    for n in done:
        lines.append(f"- {TITLES[n]}: `{' '.join(cmds[n])} --out {runs / n}`")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def _plot(path: Path, points: dict[str, tuple[float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, (macs, top1) in points.items():
        ax.scatter([macs], [top1], s=40)
        ax.annotate(TITLES[name], (macs, top1), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xlabel("MACs (millions, one 32x32 image)")
    ax.set_ylabel("test top-1 on cifar10-jpeg test/ (%)")
    ax.set_title("Converged ResNet-56: accuracy against compute")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs", help="where the row run directories are (runs)")
    p.add_argument("--run", nargs="+", choices=list(TITLES), metavar="ROW",
                   help=f"run these rows: {', '.join(TITLES)}")
    p.add_argument("--threads", type=int, default=1,
                   help="--run: torch threads of each row (1)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="--run: on this device instead of the row's own (resume a GPU row "
                        "on the CPU)")
    p.add_argument("--rows", nargs="+", choices=list(TITLES), metavar="ROW",
                   help="report only these rows (default: every finished row; B is needed)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per model (10)")
    p.add_argument("--out", default=str(RESULTS / "cifar10_jpeg_resnet56.md"))
    p.add_argument("--paired", nargs="+", type=Path, metavar="RUN",
                   help="print the test top-1 of each RUN after the first and its paired "
                        "difference to the first (no timing, nothing written)")
    p.add_argument("--data-dir", type=Path, default=JPEG,
                   help="--paired: the image folder whose test split is used (cifar10-jpeg)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="--paired: compare on test/ (default) or on the validation split "
                        "carved as the first RUN carved it")
    p.add_argument("--heldout", type=Path, metavar="DIR",
                   help="build the held-out layout (heldout_layout) in DIR and exit")
    a = p.parse_args(argv)
    runs = Path(a.runs).resolve()
    if a.heldout:
        print(heldout_layout(JPEG, a.heldout.resolve()))
        return 0
    if a.run:
        return max(run_row(n, runs, a.threads, a.device) for n in a.run)
    if a.paired:
        import torch

        torch.set_num_threads(1)
        hits = split_hits(a.paired, a.data_dir, a.split)
        ref = a.paired[0]
        for r in a.paired[1:]:
            mean, se = paired(hits[r], hits[ref])
            print(f"{r}: {a.split} top-1 {100 * float(hits[r].mean()):.2f} %, minus {ref}: "
                  f"{mean:+.2f} ± {se:.2f} points")
        return 0
    print(report(runs, Path(a.out), a.repeats, a.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
