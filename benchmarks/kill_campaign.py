"""Kill campaign: SIGKILL train, implode, vacl and compress at random moments, resume, compare.

Each command runs on a tiny model with synthetic data (CPU, one thread, fixed seed):

1. a **reference** run, uninterrupted;
2. a **campaign** of attempts: each attempt starts the command (``--resume`` once its output
   directory holds anything) and is killed with SIGKILL either after a random delay or in the
   middle of its N-th atomic file write (``RESPRUNE_FAULT_KILL_AT_WRITE``: half the bytes in
   the temporary file, nothing renamed). The first attempt of every command dies before its
   first checkpoint. Attempts repeat until one finishes;
3. after **every** kill, every file under a final name in the output directory must be whole:
   JSON files parse, ``*.safetensors`` load, ``train_state.pt`` loads with
   ``weights_only=True``; temporary files (``.NAME.*.tmp``) are ignored, as resprune ignores
   them;
4. the finished run's ``model.safetensors`` must equal the reference's **bit for bit**.

    .venv/bin/python benchmarks/kill_campaign.py --kills 6 --seed 0 [--commands train vacl]

The figures (kills, kills mid-write, resumes, identical results) go to
``benchmarks/results/kill_campaign.md``; exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, machine_info, md_table  # noqa: E402

DATA = ["--data", "synthetic", "--batch-size", "32", "--no-progress"]
COMMANDS = {
    "train": lambda base: ["train", "--model", "resnet8", "--width", "4", *DATA,
                           "--epochs", "4"],
    "implode": lambda base: ["implode", str(base), "--tolerance", "100", "--max-steps", "2",
                             "--retrain-epochs", "2", "--adapt-epochs", "1",
                             "--no-progress"],
    "vacl": lambda base: ["vacl", str(base), "--target-params-reduction", "0.3",
                          "--sparse-epochs", "2", "--finetune-epochs", "2",
                          "--lam-schedule", "raise", "--no-progress"],
    "compress": lambda base: ["compress", str(base), "--target-params-reduction", "0.4",
                              "--max-steps", "1", "--retrain-epochs", "1", "--adapt-epochs",
                              "1", "--sparse-epochs", "1", "--finetune-epochs", "1",
                              "--finetune-final-epochs", "2", "--no-progress"],
}


def _env(kill_at_write: int | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("RESPRUNE_FAULT_KILL_AT_WRITE", None)
    if kill_at_write is not None:
        env["RESPRUNE_FAULT_KILL_AT_WRITE"] = str(kill_at_write)
    return env


def _argv(cmd: list[str], out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "resprune.cli.main", *cmd, "--out", str(out),
            *(["--resume"] if resume else [])]


def run_once(cmd: list[str], out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(_argv(cmd, out, False), env=_env(), check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def check_files(out: Path) -> list[str]:
    """Problems with files under final names (none expected)."""
    import safetensors.torch

    from resprune.errors import UserError
    from resprune.io import safe_torch_load

    bad = []
    for p in out.rglob("*"):
        if not p.is_file() or p.name.startswith(".") and p.name.endswith(".tmp"):
            continue
        try:
            if p.suffix in (".json",):
                json.loads(p.read_text())
            elif p.suffix == ".jsonl":
                for line in p.read_text().splitlines():
                    json.loads(line)
            elif p.suffix == ".safetensors":
                safetensors.torch.load(p.read_bytes())
            elif p.name == "train_state.pt":
                safe_torch_load(p)
        except (ValueError, UserError, OSError, RuntimeError) as e:
            bad.append(f"{p.relative_to(out)}: {type(e).__name__}: {str(e)[:80]}")
    return bad


def weights(run: Path) -> dict:
    import safetensors.torch

    return safetensors.torch.load((run / "model.safetensors").read_bytes())


def same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def campaign(name: str, cmd: list[str], ref: Path, out: Path, kills: int, ref_seconds: float,
             rng: random.Random) -> dict:
    """Rounds of killed-and-resumed runs until ``kills`` kills have landed.

    A round ends when its run finishes (a late random delay lets it); its final weights are
    compared with the reference, and the next round starts afresh in a new directory.
    """
    total = {"command": name, "kills": 0, "mid_write": 0, "resumes": 0, "torn": [],
             "rounds": 0, "identical_rounds": 0}
    while total["kills"] < kills:
        rec = one_round(name, cmd, ref, out.with_name(f"{out.name}-{total['rounds']}"),
                        kills - total["kills"], ref_seconds, rng)
        for k in ("kills", "mid_write", "resumes", "torn"):
            total[k] += rec[k]
        total["rounds"] += 1
        total["identical_rounds"] += int(rec["identical"])
    total["identical"] = total["identical_rounds"] == total["rounds"]
    return total


def one_round(name: str, cmd: list[str], ref: Path, out: Path, kills: int, ref_seconds: float,
              rng: random.Random) -> dict:
    rec = {"command": name, "kills": 0, "mid_write": 0, "resumes": 0, "torn": [],
           "identical": False}
    attempt = 0
    while True:
        resume = out.is_dir() and any(out.iterdir())
        rec["resumes"] += int(resume)
        kill_write = None
        delay = None
        if rec["kills"] < kills:
            if attempt == 0:
                kill_write = 1  # dies before its first checkpoint
            elif rng.random() < 0.5:
                kill_write = rng.randint(1, 12)
            else:
                delay = rng.uniform(0.05, 1.0) * ref_seconds
        proc = subprocess.Popen(_argv(cmd, out, resume), env=_env(kill_write), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
        attempt += 1
        if proc.returncode == -signal.SIGKILL:
            rec["kills"] += 1
            rec["mid_write"] += int(kill_write is not None)
            rec["torn"] += check_files(out)
            continue
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed (exit {proc.returncode}): "
                               f"{err.decode()[-400:]}")
        break
    rec["torn"] += check_files(out)
    rec["identical"] = same(weights(out), weights(ref))
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=6, help="kills per command (6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    p.add_argument("--out", default=str(RESULTS / "kill_campaign.md"),
                   help="results file ('-': print only)")
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="resprune-kills-"))
    rows = []
    try:
        base = work / "base"
        run_once(COMMANDS["train"](None), base)
        for name in a.commands:
            cmd = COMMANDS[name](base)
            ref = work / f"{name}-ref"
            seconds = run_once(cmd, ref)
            rows.append(campaign(name, cmd, ref, work / f"{name}-killed", a.kills, seconds,
                                 rng))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = all(r["identical"] and not r["torn"] for r in rows)
    body = [[r["command"], r["kills"], r["mid_write"], r["resumes"], len(r["torn"]),
             f"{r['identical_rounds']} of {r['rounds']}"] for r in rows]
    total = [sum(r[k] for r in rows) for k in ("kills", "mid_write", "resumes")]
    body.append(["all", *total, sum(len(r["torn"]) for r in rows),
                 f"{sum(r['identical_rounds'] for r in rows)} of "
                 f"{sum(r['rounds'] for r in rows)}"])
    cmdline = " ".join(["benchmarks/kill_campaign.py", *(argv if argv is not None
                                                         else sys.argv[1:])])
    text = "\n".join([
        "# Kill campaign: SIGKILL, resume, compare bit for bit\n",
        f"Command: `.venv/bin/python {cmdline}`  ",
        f"Machine: {machine_info(1)}.\n",
        md_table(["command", "kills", "of them mid-write", "resumes", "torn files",
                  "runs whose final weights equal the uninterrupted run's, bit for bit"],
                 body),
        "Kills land after a random delay (up to the uninterrupted run's duration) or in the "
        "middle of a random atomic write (half the bytes written, nothing renamed); every "
        "command's first attempt dies at its first write, before any checkpoint. A run that "
        "finishes before the command's kills are spent (a late delay) is compared and the "
        "next starts afresh (rounds). After each kill every file under a final name must "
        "load.\n",
    ]) + "\n"
    print(text)
    for r in rows:
        for t in r["torn"]:
            print(f"torn ({r['command']}): {t}", file=sys.stderr)
    if a.out != "-":
        Path(a.out).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
