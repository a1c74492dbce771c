"""A shortened kill campaign (benchmarks/kill_campaign.py): real SIGKILLs, some in the middle
of a checkpoint write, then --resume; the result must equal an uninterrupted run bit for bit
and no file under a final name may ever be torn."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_train_and_vacl_survive_real_kills(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import kill_campaign
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "kills.md"
    code = kill_campaign.main(["--kills", "3", "--seed", "1", "--commands", "train", "vacl",
                               "--out", str(out)])
    text = out.read_text()
    assert code == 0, text
    row = next(line for line in text.splitlines() if line.startswith("| all |"))
    _, _, kills, mid_write, resumes, torn, identical, _ = [c.strip() for c in row.split("|")]
    assert int(kills) >= 2 and int(mid_write) >= 2  # each first attempt dies at its 1st write
    assert int(resumes) >= 2 and torn == "0" and identical == "2 of 2"
